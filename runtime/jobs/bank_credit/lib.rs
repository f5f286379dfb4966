//! Example job: a bank's small-business credit indicators per industry and
//! district, from the enterprise register, monthly social-insurance
//! payments and tax-credit grades. Everything it receives is already
//! protected; it only combines the released aggregates and emits CSV.

fn main() -> Result<(), invis::Error> {
    // 1. How many enterprises, and how large, per industry and district.
    let register = invis::query(
        "SELECT industry, district, COUNT(*) AS enterprises, AVG(employees) AS avg_employees \
         FROM enterprise_register GROUP BY industry, district",
    )?;
    // 2. Social-insurance contributions over the year (12 monthly rows per enterprise).
    let insurance = invis::query(
        "SELECT r.industry, r.district, SUM(s.insured_count) AS insured_months, SUM(s.amount_paid) AS paid \
         FROM enterprise_register r JOIN social_insurance s ON r.enterprise_id = s.enterprise_id \
         GROUP BY r.industry, r.district",
    )?;
    // 3. Enterprises with the best tax-credit grade.
    let grades = invis::query(
        "SELECT r.industry, r.district, COUNT(*) AS grade_a \
         FROM enterprise_register r JOIN tax_credit t ON r.enterprise_id = t.enterprise_id \
         WHERE t.grade = 'A' GROUP BY r.industry, r.district",
    )?;

    invis::emit_str("industry,district,enterprises,avg_employees,avg_insured_staff,avg_monthly_contribution,grade_a_share\n")?;
    for row in 0..register.num_rows() {
        let industry = register.text("industry", row);
        let district = register.text("district", row);
        let n = register.f64("enterprises", row).unwrap_or(0.0);
        let find = |t: &invis::Table| -> Option<usize> {
            (0..t.num_rows()).find(|&i| t.text("industry", i) == industry && t.text("district", i) == district)
        };
        let (insured, paid) = match find(&insurance) {
            Some(i) => (insurance.f64("insured_months", i), insurance.f64("paid", i)),
            None => (None, None),
        };
        let grade_a = find(&grades).and_then(|i| grades.f64("grade_a", i));
        let per_month = |v: Option<f64>| match v {
            Some(v) if n >= 1.0 => format!("{:.1}", v / (n * 12.0)),
            _ => String::from("suppressed"),
        };
        let share = match grade_a {
            Some(a) if n >= 1.0 => format!("{:.3}", (a / n).min(1.0)),
            _ => String::from("suppressed"),
        };
        invis::emit_str(&format!(
            "{},{},{},{},{},{},{}\n",
            invis::csv_field(&industry),
            invis::csv_field(&district),
            n as i64,
            register.text("avg_employees", row),
            per_month(insured),
            per_month(paid),
            share
        ))?;
    }
    Ok(())
}

invis::entry!(main);
