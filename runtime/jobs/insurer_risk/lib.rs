//! Example job: an insurer prices workplace-injury cover per industry. It
//! needs, per industry, how much of the workforce is actually insured and
//! how often enterprises fall into arrears. The coverage ratio of each
//! enterprise-month (insured staff / employees) is computed by a row
//! function inside the platform; only its protected average comes out.

/// Share of an enterprise's employees that were insured in a month (null
/// when the register has no employees). Stateless, so it may be a row
/// function.
#[no_mangle]
pub extern "C" fn coverage(insured: f64, employees: f64) -> f64 {
    if employees > 0.0 && insured >= 0.0 {
        (insured / employees).min(1.0)
    } else {
        f64::NAN
    }
}

/// Premium loading from coverage and arrears: under-insured and late-paying
/// industries cost more.
fn loading(coverage: f64, arrears: f64) -> f64 {
    1.0 + 0.8 * (1.0 - coverage).max(0.0) + 1.5 * arrears.max(0.0)
}

fn main() -> Result<(), invis::Error> {
    invis::register_row_function("coverage", 0.0, 1.0)?;
    let t = invis::query(
        "SELECT r.industry, AVG(coverage(s.insured_count, r.employees)) AS coverage, \
         AVG(s.arrears) AS arrears_rate, COUNT(*) AS enterprise_months \
         FROM enterprise_register r JOIN social_insurance s ON r.enterprise_id = s.enterprise_id \
         GROUP BY r.industry",
    )?;
    invis::emit_str("industry,insured_share,arrears_rate,enterprise_months,premium_loading\n")?;
    for row in 0..t.num_rows() {
        let industry = t.text("industry", row);
        let months = t.f64("enterprise_months", row).unwrap_or(0.0);
        match (t.f64("coverage", row), t.f64("arrears_rate", row)) {
            (Some(c), Some(a)) => {
                let (c, a) = (c.max(0.0).min(1.0), a.max(0.0).min(1.0));
                invis::emit_str(&format!(
                    "{},{:.3},{:.3},{},{:.2}\n",
                    invis::csv_field(&industry),
                    c,
                    a,
                    months as i64,
                    loading(c, a)
                ))?;
            }
            _ => invis::emit_str(&format!(
                "{},suppressed,suppressed,{},\n",
                invis::csv_field(&industry),
                months as i64
            ))?,
        }
    }
    Ok(())
}

invis::entry!(main);
