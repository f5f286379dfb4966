//! Fees metered from actual use, per agreement (R15). Amounts are integer
//! fen (0.01 yuan); quantities are what the platform recorded for the
//! agreement's jobs. Rows are metered as the catalog row counts of the
//! tables each released query read (a whole-table price), never as rows
//! matched: a fee that followed a filter's selectivity would disclose an
//! exact count outside the privacy mechanism.

use serde::{Deserialize, Serialize};

/// The published tariff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariff {
    /// Per job that ran (succeeded or failed after starting), in fen.
    pub per_job_fen: u64,
    /// Per released query, in fen.
    pub per_query_fen: u64,
    /// Per million table rows read by released queries, in fen.
    pub per_million_rows_fen: u64,
    /// Per 10^9 units of fuel (WASM instructions), in fen.
    pub per_billion_fuel_fen: u64,
    /// Per second spent compiling a job's module, in fen.
    #[serde(default = "default_compile_price")]
    pub per_compile_second_fen: u64,
}

fn default_compile_price() -> u64 {
    5
}

impl Default for Tariff {
    fn default() -> Self {
        Tariff {
            per_job_fen: 100,
            per_query_fen: 20,
            per_million_rows_fen: 50,
            per_billion_fuel_fen: 10,
            per_compile_second_fen: default_compile_price(),
        }
    }
}

/// Use of one agreement in a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metered {
    /// Jobs that ran.
    pub jobs: u64,
    /// Queries released.
    pub queries: u64,
    /// Table rows read by released queries.
    pub rows: u64,
    /// Fuel used.
    pub fuel: u64,
    /// Milliseconds spent compiling the jobs' modules.
    #[serde(default)]
    pub compile_ms: u64,
}

/// One line of a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// What is charged.
    pub item: String,
    /// How much was used.
    pub quantity: u64,
    /// Price per `per` units, in fen.
    pub price_fen: u64,
    /// The unit count the price is for.
    pub per: u64,
    /// Amount in fen, rounded up to the next fen.
    pub amount_fen: u64,
}

/// A statement: lines and their total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// The use it charges.
    pub metered: Metered,
    /// One line per item.
    pub lines: Vec<Line>,
    /// Sum of the lines, in fen.
    pub total_fen: u64,
}

fn line(item: &str, quantity: u64, price_fen: u64, per: u64) -> Line {
    // Exact integer arithmetic, rounded up; saturates instead of wrapping.
    let amount = (u128::from(quantity) * u128::from(price_fen)).div_ceil(u128::from(per.max(1)));
    Line {
        item: item.into(),
        quantity,
        price_fen,
        per,
        amount_fen: u64::try_from(amount).unwrap_or(u64::MAX),
    }
}

impl Tariff {
    /// The statement for `m`.
    pub fn statement(&self, m: Metered) -> Statement {
        let lines = vec![
            line("jobs", m.jobs, self.per_job_fen, 1),
            line("released queries", m.queries, self.per_query_fen, 1),
            line("table rows read", m.rows, self.per_million_rows_fen, 1_000_000),
            line("fuel", m.fuel, self.per_billion_fuel_fen, 1_000_000_000),
            line(
                "compile milliseconds",
                m.compile_ms,
                self.per_compile_second_fen,
                1_000,
            ),
        ];
        let total_fen = lines.iter().fold(0u64, |t, l| t.saturating_add(l.amount_fen));
        Statement {
            metered: m,
            lines,
            total_fen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_exact_and_round_up() {
        let t = Tariff::default();
        let s = t.statement(Metered {
            jobs: 3,
            queries: 7,
            rows: 2_500_001,
            fuel: 1_000_000_001,
            compile_ms: 1_500,
        });
        let amounts: Vec<u64> = s.lines.iter().map(|l| l.amount_fen).collect();
        // 3 x 100; 7 x 20; 2.500001 M rows x 50 = 125.00005 -> 126; 1.000000001 G fuel x 10 -> 11;
        // 1.5 s of compiling x 5 = 7.5 -> 8.
        assert_eq!(amounts, [300, 140, 126, 11, 8]);
        assert_eq!(s.total_fen, 585);
        assert_eq!(t.statement(Metered::default()).total_fen, 0);
        let huge = t.statement(Metered {
            jobs: u64::MAX,
            queries: u64::MAX,
            rows: u64::MAX,
            fuel: u64::MAX,
            compile_ms: u64::MAX,
        });
        assert_eq!(huge.total_fen, u64::MAX, "saturates, never wraps");
    }
}
