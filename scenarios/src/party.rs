//! Parties and roles: who may act on the platform (R24, R27).

use serde::{Deserialize, Serialize};
use std::fmt;

/// The four roles of the regulations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A government department that registers datasets (数据提供单位).
    Provider,
    /// The platform operator, the primary development entity (一级开发主体).
    Operator,
    /// An outside company that applies for scenarios and runs jobs (二级开发主体).
    Developer,
    /// The big-data authority that approves scenario classes and audits (大数据主管部门).
    Regulator,
}

impl Role {
    /// The wire name of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Provider => "provider",
            Role::Operator => "operator",
            Role::Developer => "developer",
            Role::Regulator => "regulator",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "provider" => Some(Role::Provider),
            "operator" => Some(Role::Operator),
            "developer" => Some(Role::Developer),
            "regulator" => Some(Role::Regulator),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated party acting on the platform. Every state change carries one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Stable party id (`pt_...`).
    pub id: String,
    /// The party's role; a party has exactly one.
    pub role: Role,
    /// Display name, for reports.
    pub name: String,
    /// The organization the party acts for (`org_...`).
    #[serde(default)]
    pub org: String,
}

impl Actor {
    /// Fails with [`crate::Error::Forbidden`] unless the actor has `role`.
    pub fn require(&self, role: Role) -> crate::Result<()> {
        if self.role == role {
            Ok(())
        } else {
            Err(crate::Error::Forbidden(format!(
                "this action needs the {role} role, not {}",
                self.role
            )))
        }
    }
}

/// A party for tests: id `id`, in an organization of its own.
#[cfg(test)]
pub(crate) fn test_actor(id: &str, role: Role) -> Actor {
    Actor {
        id: id.into(),
        role,
        name: id.into(),
        org: format!("org_{id}"),
    }
}

/// A fact about an organization's standing that bears on its eligibility
/// as a developer (R10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StandingKind {
    /// A public security incident the organization was responsible for.
    SecurityIncident,
    /// A listing on the serious-dishonesty list (严重失信名单).
    DishonestyListing,
}

/// One standing record, kept by the operator from official sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standing {
    /// What it is.
    pub kind: StandingKind,
    /// When it happened, or when the listing began.
    pub date: chrono::NaiveDate,
    /// When a listing ended (absent while it lasts).
    #[serde(default)]
    pub until: Option<chrono::NaiveDate>,
    /// Where the fact comes from.
    pub source: String,
}

/// Years a public security incident bars an organization (R10).
pub const INCIDENT_BAR_YEARS: u32 = 3;

/// Why an organization with these records is not eligible to apply on
/// `today`; empty when it is.
pub fn ineligibility(records: &[Standing], today: chrono::NaiveDate) -> Vec<String> {
    let bar_start = today
        .checked_sub_months(chrono::Months::new(12 * INCIDENT_BAR_YEARS))
        .unwrap_or(chrono::NaiveDate::MIN);
    let mut out = Vec::new();
    for r in records {
        match r.kind {
            StandingKind::SecurityIncident if r.date > bar_start && r.date <= today => out.push(format!(
                "a public security incident on {} ({}) is within the last {INCIDENT_BAR_YEARS} years",
                r.date, r.source
            )),
            StandingKind::DishonestyListing if r.date <= today && r.until.is_none_or(|u| today <= u) => out
                .push(format!(
                    "listed as seriously dishonest since {} ({})",
                    r.date, r.source
                )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> chrono::NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn incidents_bar_for_three_years_and_listings_while_they_last() {
        let today = d("2026-11-23");
        let incident = |date: &str| Standing {
            kind: StandingKind::SecurityIncident,
            date: d(date),
            until: None,
            source: "CAC notice".into(),
        };
        assert_eq!(ineligibility(&[incident("2023-11-24")], today).len(), 1);
        assert!(ineligibility(&[incident("2023-11-23")], today).is_empty());
        let listing = |until: Option<&str>| Standing {
            kind: StandingKind::DishonestyListing,
            date: d("2025-01-01"),
            until: until.map(d),
            source: "Credit China".into(),
        };
        let why = ineligibility(&[listing(None)], today);
        assert!(why[0].contains("dishonest"), "{why:?}");
        assert!(ineligibility(&[listing(Some("2026-06-30"))], today).is_empty());
        assert!(ineligibility(&[], today).is_empty());
    }
}
