//! Deterministic synthetic municipal data for the demo: an enterprise
//! register, a year of monthly social-insurance payments and tax-credit
//! grades. Plausible shapes (skewed firm sizes, industries concentrated in
//! some districts), generated from a fixed seed so every run is identical.

use sandbox::arrow::array::{ArrayRef, Int64Builder, StringBuilder};
use sandbox::arrow::datatypes::{Field, Schema};
use sandbox::arrow::record_batch::RecordBatch;
use sandbox::sample::SplitMix64;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Industries of the register.
pub const INDUSTRIES: [&str; 8] = [
    "manufacturing",
    "wholesale_retail",
    "software_it",
    "construction",
    "logistics",
    "catering",
    "tourism",
    "agriculture",
];

/// The six districts of Xiamen.
pub const DISTRICTS: [&str; 6] = ["siming", "huli", "jimei", "haicang", "tongan", "xiangan"];

/// Tax-credit grades, best first.
pub const GRADES: [&str; 5] = ["A", "B", "M", "C", "D"];

/// The synthetic-data generator, with the two draws the demo needs on top.
struct Rng(SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn unit(&mut self) -> f64 {
        self.0.unit()
    }
    fn pick(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
    /// Standard normal (Box-Muller); plausibility only, not privacy.
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub struct DemoFiles {
    /// Enterprise register (one row per enterprise).
    pub register: PathBuf,
    /// Monthly social-insurance payments (twelve rows per enterprise).
    pub insurance: PathBuf,
    /// Tax-credit grades (one row per enterprise).
    pub tax: PathBuf,
    /// Enterprises generated.
    pub enterprises: usize,
}

fn strings(v: Vec<String>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for s in v {
        b.append_value(s);
    }
    Arc::new(b.finish())
}

fn ints(v: Vec<i64>) -> ArrayRef {
    let mut b = Int64Builder::new();
    for x in v {
        b.append_value(x);
    }
    Arc::new(b.finish())
}

fn batch(cols: Vec<(&str, ArrayRef)>) -> anyhow::Result<RecordBatch> {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), false))
        .collect();
    let arrays: Vec<ArrayRef> = cols.into_iter().map(|(_, a)| a).collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// Generates the three files into `dir`.
pub fn generate(dir: &Path, enterprises: usize) -> anyhow::Result<DemoFiles> {
    std::fs::create_dir_all(dir)?;
    let files = DemoFiles {
        register: dir.join("enterprise_register.parquet"),
        insurance: dir.join("social_insurance.parquet"),
        tax: dir.join("tax_credit.parquet"),
        enterprises,
    };
    let t = tables(enterprises)?;
    sandbox::files::write_parquet(&files.register, &[t.register])?;
    sandbox::files::write_parquet(&files.insurance, &[t.insurance])?;
    sandbox::files::write_parquet(&files.tax, &[t.tax])?;
    Ok(files)
}

/// The three demo tables, as [`generate`] writes them.
pub struct DemoTables {
    /// `enterprise_register`.
    pub register: RecordBatch,
    /// `social_insurance`.
    pub insurance: RecordBatch,
    /// `tax_credit`.
    pub tax: RecordBatch,
}

/// The demo tables for `enterprises` firms, in memory (the same rows on
/// every call: the seed is fixed).
pub fn tables(enterprises: usize) -> anyhow::Result<DemoTables> {
    let mut rng = Rng(SplitMix64(20_261_123));
    let industry_weights = [0.22, 0.25, 0.12, 0.10, 0.09, 0.12, 0.06, 0.04];
    // District weights per industry: agriculture sits in the outer districts.
    let district_weights = |industry: usize| -> [f64; 6] {
        match industry {
            7 => [0.002, 0.01, 0.15, 0.15, 0.40, 0.288],
            2 => [0.30, 0.45, 0.12, 0.05, 0.04, 0.04],
            0 => [0.03, 0.12, 0.25, 0.25, 0.20, 0.15],
            _ => [0.26, 0.26, 0.16, 0.12, 0.11, 0.09],
        }
    };
    let mut ids = Vec::with_capacity(enterprises);
    let (mut names, mut inds, mut dists, mut phones) = (vec![], vec![], vec![], vec![]);
    let (mut founded, mut capital, mut employees) = (vec![], vec![], vec![]);
    let (mut s_ids, mut s_month, mut s_insured, mut s_paid, mut s_arrears) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut t_ids, mut t_year, mut t_grade) = (vec![], vec![], vec![]);
    let syllables = [
        "Hai", "Lu", "Xin", "Hua", "Jin", "Tai", "Feng", "Yuan", "Kai", "Rui", "Sheng", "Tong",
    ];
    for i in 0..enterprises {
        let id = format!(
            "91350200MA{:08X}",
            (i as u64).wrapping_mul(2_654_435_761) & 0xFFFF_FFFF
        );
        let ind = rng.pick(&industry_weights);
        let dist = rng.pick(&district_weights(ind));
        let size = (2.3 + 1.1 * rng.normal()).exp().round().clamp(1.0, 3000.0) as i64;
        let a = syllables[(rng.next() % 12) as usize];
        let b = syllables[(rng.next() % 12) as usize];
        ids.push(id.clone());
        names.push(format!(
            "Xiamen {a}{b} {} Co., Ltd.",
            INDUSTRIES[ind].replace('_', " ")
        ));
        inds.push(INDUSTRIES[ind].to_string());
        dists.push(DISTRICTS[dist].to_string());
        phones.push(format!("13{:09}", rng.next() % 1_000_000_000));
        founded.push(1992 + (rng.next() % 34) as i64);
        capital.push((size as f64 * (20.0 + 40.0 * rng.unit())).round() as i64);
        employees.push(size);
        // Social insurance: most staff insured; wages differ by industry.
        let wage = [5200.0, 4600.0, 9800.0, 6100.0, 5400.0, 4200.0, 4500.0, 3900.0][ind];
        let coverage = 0.65 + 0.3 * rng.unit();
        let troubled = rng.unit() < 0.04;
        for m in 1..=12 {
            let insured = ((size as f64) * coverage * (1.0 + 0.05 * rng.normal()))
                .round()
                .max(0.0) as i64;
            let arrears = i64::from(troubled && rng.unit() < 0.5);
            let paid = if arrears == 1 {
                0
            } else {
                (insured as f64 * wage * 0.16 * (1.0 + 0.03 * rng.normal())).round() as i64
            };
            s_ids.push(id.clone());
            s_month.push(format!("2025-{m:02}"));
            s_insured.push(insured);
            s_paid.push(paid.max(0));
            s_arrears.push(arrears);
        }
        // Tax grade: larger and untroubled firms grade better.
        let mut w = [0.28, 0.40, 0.20, 0.08, 0.04];
        if size > 50 {
            w[0] += 0.15;
        }
        if troubled {
            w[3] += 0.3;
            w[4] += 0.2;
        }
        t_ids.push(id);
        t_year.push(2025);
        t_grade.push(GRADES[rng.pick(&w)].to_string());
    }
    let register = batch(vec![
        ("enterprise_id", strings(ids)),
        ("name", strings(names)),
        ("industry", strings(inds)),
        ("district", strings(dists)),
        ("founded_year", ints(founded)),
        ("registered_capital", ints(capital)),
        ("employees", ints(employees)),
        ("legal_rep_phone", strings(phones)),
    ])?;
    let insurance = batch(vec![
        ("enterprise_id", strings(s_ids)),
        ("month", strings(s_month)),
        ("insured_count", ints(s_insured)),
        ("amount_paid", ints(s_paid)),
        ("arrears", ints(s_arrears)),
    ])?;
    let tax = batch(vec![
        ("enterprise_id", strings(t_ids)),
        ("year", ints(t_year)),
        ("grade", strings(t_grade)),
    ])?;
    Ok(DemoTables {
        register,
        insurance,
        tax,
    })
}
