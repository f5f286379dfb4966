//! Working-day calendar for review deadlines (R12): weekends are off, listed
//! public holidays are off, listed make-up workdays (调休) are on.

use chrono::{Datelike, Days, NaiveDate, Weekday};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A working-day calendar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calendar {
    /// Days off that would otherwise be workdays.
    #[serde(default)]
    pub holidays: BTreeSet<NaiveDate>,
    /// Weekend days that are workdays.
    #[serde(default)]
    pub workdays: BTreeSet<NaiveDate>,
}

impl Calendar {
    /// True when `d` is a working day.
    pub fn is_working_day(&self, d: NaiveDate) -> bool {
        if self.workdays.contains(&d) {
            return true;
        }
        if self.holidays.contains(&d) {
            return false;
        }
        !matches!(d.weekday(), Weekday::Sat | Weekday::Sun)
    }

    /// The date `n` working days after `start` (the start day itself is not
    /// counted, as in "answer within 5 working days of receipt").
    pub fn add_working_days(&self, start: NaiveDate, n: u32) -> NaiveDate {
        let mut d = start;
        let mut left = n;
        // A year of consecutive holidays is not a calendar anyone uses; the
        // bound keeps a malformed calendar from looping forever.
        let mut guard = 0u32;
        while left > 0 && guard < 3660 {
            d = d.checked_add_days(Days::new(1)).unwrap_or(d);
            if self.is_working_day(d) {
                left -= 1;
            }
            guard += 1;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn five_working_days_skip_the_weekend() {
        let c = Calendar::default();
        // Monday 2026-11-23 + 5 working days = Monday 2026-11-30.
        assert_eq!(c.add_working_days(d("2026-11-23"), 5), d("2026-11-30"));
        // Friday + 1 = Monday.
        assert_eq!(c.add_working_days(d("2026-11-27"), 1), d("2026-11-30"));
    }

    #[test]
    fn holidays_and_makeup_days() {
        let mut c = Calendar::default();
        c.holidays.insert(d("2026-10-01"));
        c.holidays.insert(d("2026-10-02"));
        c.workdays.insert(d("2026-10-10")); // a Saturday
        assert!(!c.is_working_day(d("2026-10-01")));
        assert!(c.is_working_day(d("2026-10-10")));
        // Wed 2026-09-30 + 1 skips Thu/Fri holidays and the weekend: Mon 10-05.
        assert_eq!(c.add_working_days(d("2026-09-30"), 1), d("2026-10-05"));
    }
}
