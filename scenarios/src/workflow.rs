//! State machines of scenarios, applications and agreements (R8, R11-R13).
//!
//! Every transition takes the acting party and the time, checks role and
//! state, and either changes the record or returns an error without
//! changing anything.

use crate::calendar::Calendar;
use crate::party::{Actor, Role};
use crate::policy::ScenarioSpec;
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Review deadline for applications, in working days (R12).
pub const REVIEW_WORKING_DAYS: u32 = 5;

/// Who made a request: the party and its organization.
#[derive(Debug, Clone, Copy)]
struct Requester<'a> {
    id: &'a str,
    org: &'a str,
}

/// The checks every approve-or-reject decision shares: the decider is not
/// the requester, nor a member of the requester's organization, nor an
/// account that party or organization created (see
/// [`crate::party::check_independent`]), the record
/// is still undecided, and a rejection says why.
fn check_decision(
    approve: bool,
    reason: Option<&str>,
    by: &Actor,
    requester: Requester<'_>,
    undecided: bool,
    what: &str,
) -> Result<()> {
    crate::party::check_independent(by, requester.id, requester.org)?;
    if !undecided {
        return Err(Error::IllegalState(format!("{what} was already decided")));
    }
    if !approve && reason.is_none_or(|r| r.trim().is_empty()) {
        return Err(Error::InvalidRequest("a rejection needs a reason".into()));
    }
    Ok(())
}

/// The fields of a submitted request (an application, a data
/// application) that the operator's decision reads and writes.
struct Review<'a> {
    what: String,
    requester: Requester<'a>,
    status: &'a mut ApplicationStatus,
    decided_by: &'a mut Option<String>,
    decided_at: &'a mut Option<DateTime<Utc>>,
    reason: &'a mut Option<String>,
}

impl Review<'_> {
    /// The operator approves or rejects (with a reason) a request that is
    /// still submitted.
    fn decide(self, approve: bool, reason: Option<String>, by: &Actor, at: DateTime<Utc>) -> Result<()> {
        by.require(Role::Operator)?;
        let undecided = *self.status == ApplicationStatus::Submitted;
        check_decision(
            approve,
            reason.as_deref(),
            by,
            self.requester,
            undecided,
            &self.what,
        )?;
        *self.status = if approve {
            ApplicationStatus::Approved
        } else {
            ApplicationStatus::Rejected
        };
        *self.decided_by = Some(by.id.clone());
        *self.decided_at = Some(at);
        *self.reason = reason;
        Ok(())
    }
}

/// Lifecycle of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioStatus {
    /// Proposed by the operator, waiting for the regulator.
    Pending,
    /// Approved: visible to developers in the scenario catalog.
    Approved,
    /// Rejected by the regulator, with a reason.
    Rejected,
    /// Stopped by the operator after a risk was found (R20): hidden from
    /// developers, every agreement under it halted.
    Halted,
}

/// A scenario and its approval state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    /// `sc_...`
    pub id: String,
    /// What was proposed.
    pub spec: ScenarioSpec,
    /// Approval state.
    pub status: ScenarioStatus,
    /// Operator who proposed it.
    pub created_by: String,
    /// Their organization.
    #[serde(default)]
    pub created_by_org: String,
    /// When it was proposed.
    pub created_at: DateTime<Utc>,
    /// Regulator who decided.
    pub decided_by: Option<String>,
    /// When it was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// Reason given with the decision.
    pub reason: Option<String>,
}

impl Scenario {
    /// A new proposal by an operator.
    pub fn propose(id: String, spec: ScenarioSpec, by: &Actor, at: DateTime<Utc>) -> Result<Scenario> {
        by.require(Role::Operator)?;
        Ok(Scenario {
            id,
            spec,
            status: ScenarioStatus::Pending,
            created_by: by.id.clone(),
            created_by_org: by.org.clone(),
            created_at: at,
            decided_by: None,
            decided_at: None,
            reason: None,
        })
    }

    /// Approves a new proposal under its class, already approved by the
    /// regulator `decider` with `prior` (一类场景一审定: a class is approved
    /// once). Refused when `decider` could not have decided this proposal
    /// itself (I16): an approval manufactured by the proposer's
    /// organization approves nothing further.
    pub fn approve_under_class(
        &mut self,
        prior: &Scenario,
        decider: &Actor,
        at: DateTime<Utc>,
    ) -> Result<()> {
        decider.require(Role::Regulator)?;
        if prior.decided_by.as_deref() != Some(decider.id.as_str()) {
            return Err(Error::IllegalState(format!(
                "scenario {} was not decided by {}",
                prior.id, decider.id
            )));
        }
        crate::party::check_independent(decider, &self.created_by, &self.created_by_org)?;
        if self.status != ScenarioStatus::Pending {
            return Err(Error::IllegalState(format!(
                "scenario {} was already decided",
                self.id
            )));
        }
        if prior.status != ScenarioStatus::Approved || prior.spec.class != self.spec.class {
            return Err(Error::IllegalState(format!(
                "scenario {} does not approve the class `{}`",
                prior.id, self.spec.class
            )));
        }
        self.status = ScenarioStatus::Approved;
        self.decided_by = prior.decided_by.clone();
        self.decided_at = Some(at);
        self.reason = Some(format!(
            "class `{}` was approved by the regulator with scenario {}",
            self.spec.class, prior.id
        ));
        Ok(())
    }

    /// The regulator's decision. Nobody decides their own proposal.
    pub fn decide(
        &mut self,
        approve: bool,
        reason: Option<String>,
        by: &Actor,
        at: DateTime<Utc>,
    ) -> Result<()> {
        by.require(Role::Regulator)?;
        let undecided = self.status == ScenarioStatus::Pending;
        let what = format!("scenario {}", self.id);
        let requester = Requester {
            id: &self.created_by,
            org: &self.created_by_org,
        };
        check_decision(approve, reason.as_deref(), by, requester, undecided, &what)?;
        self.status = if approve {
            ScenarioStatus::Approved
        } else {
            ScenarioStatus::Rejected
        };
        self.decided_by = Some(by.id.clone());
        self.decided_at = Some(at);
        self.reason = reason;
        Ok(())
    }
}

/// The materials of an application (R11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Materials {
    /// Qualifications of the applicant (licences, certifications).
    pub qualifications: String,
    /// Data needs and why the scenario's data meet them.
    pub data_needs: String,
    /// How the applicant will develop (jobs, models).
    pub development_method: String,
    /// Security measures on the applicant's side.
    pub security_measures: String,
    /// Named security officer (R10).
    pub security_officer: String,
}

impl Materials {
    /// Every item must be present.
    pub fn validate(&self) -> Result<()> {
        let items = [
            ("qualifications", &self.qualifications),
            ("data_needs", &self.data_needs),
            ("development_method", &self.development_method),
            ("security_measures", &self.security_measures),
            ("security_officer", &self.security_officer),
        ];
        let missing: Vec<&str> = items
            .iter()
            .filter(|(_, v)| v.trim().is_empty())
            .map(|(k, _)| *k)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidRequest(format!(
                "missing materials: {}",
                missing.join(", ")
            )))
        }
    }
}

/// Lifecycle of an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationStatus {
    /// Waiting for the operator.
    Submitted,
    /// Approved; an agreement was issued.
    Approved,
    /// Rejected with a reason.
    Rejected,
}

/// A developer's application for a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Application {
    /// `ap_...`
    pub id: String,
    /// Scenario applied for.
    pub scenario_id: String,
    /// Applying developer.
    pub developer_id: String,
    /// Its organization.
    #[serde(default)]
    pub developer_org: String,
    /// Materials.
    pub materials: Materials,
    /// State.
    pub status: ApplicationStatus,
    /// Submission time.
    pub submitted_at: DateTime<Utc>,
    /// Decision deadline: 5 working days after submission.
    pub due_on: chrono::NaiveDate,
    /// Operator who decided.
    pub decided_by: Option<String>,
    /// Decision time.
    pub decided_at: Option<DateTime<Utc>>,
    /// Reason (mandatory on rejection).
    pub reason: Option<String>,
}

impl Application {
    /// A developer applies for an approved scenario.
    pub fn submit(
        id: String,
        scenario: &Scenario,
        materials: Materials,
        by: &Actor,
        at: DateTime<Utc>,
        calendar: &Calendar,
    ) -> Result<Application> {
        by.require(Role::Developer)?;
        if scenario.status != ScenarioStatus::Approved {
            return Err(Error::IllegalState(format!(
                "scenario {} is not approved",
                scenario.id
            )));
        }
        materials.validate()?;
        Ok(Application {
            id,
            scenario_id: scenario.id.clone(),
            developer_id: by.id.clone(),
            developer_org: by.org.clone(),
            materials,
            status: ApplicationStatus::Submitted,
            submitted_at: at,
            due_on: calendar.add_working_days(at.date_naive(), REVIEW_WORKING_DAYS),
            decided_by: None,
            decided_at: None,
            reason: None,
        })
    }

    /// The operator's decision.
    pub fn decide(
        &mut self,
        approve: bool,
        reason: Option<String>,
        by: &Actor,
        at: DateTime<Utc>,
    ) -> Result<()> {
        Review {
            what: format!("application {}", self.id),
            requester: Requester {
                id: &self.developer_id,
                org: &self.developer_org,
            },
            status: &mut self.status,
            decided_by: &mut self.decided_by,
            decided_at: &mut self.decided_at,
            reason: &mut self.reason,
        }
        .decide(approve, reason, by, at)
    }

    /// True when undecided past its due date.
    pub fn is_overdue(&self, today: chrono::NaiveDate) -> bool {
        self.status == ApplicationStatus::Submitted && today > self.due_on
    }
}

/// Working days the operator has to file a signed agreement (R12).
pub const FILING_DAYS: u32 = 5;

/// Lifecycle of an agreement (R13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgreementStatus {
    /// Issued and signed by the operator; waiting for the developer.
    Issued,
    /// Signed by both parties: access is open within the validity period.
    Active,
    /// Ended early by the operator or the developer.
    Terminated,
    /// Stopped at once after a risk was found (R20); see the risk report.
    Halted,
}

/// The terms of an agreement (R13).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terms {
    /// Conditions of use.
    pub conditions: String,
    /// Security requirements.
    pub security_requirements: String,
    /// Fees.
    pub fees: String,
    /// Liability.
    pub liability: String,
}

impl Default for Terms {
    fn default() -> Self {
        Terms {
            conditions: "results may be used only for the scenario's stated purpose".into(),
            security_requirements:
                "jobs run only inside the platform; no attempt to re-identify data subjects".into(),
            fees: "metered per job, rows scanned and fuel, per the published tariff".into(),
            liability: "the party using the data is responsible for its use (谁使用谁负责)".into(),
        }
    }
}

/// An agreement between the operator and a developer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// `ag_...`
    pub id: String,
    /// The approved application.
    pub application_id: String,
    /// Scenario whose scope the agreement opens.
    pub scenario_id: String,
    /// The developer.
    pub developer_id: String,
    /// The operator who issued it.
    pub operator_id: String,
    /// Terms.
    pub terms: Terms,
    /// State.
    pub status: AgreementStatus,
    /// Start of validity.
    pub valid_from: DateTime<Utc>,
    /// End of validity (exclusive).
    pub valid_until: DateTime<Utc>,
    /// When the developer signed.
    pub signed_at: Option<DateTime<Utc>>,
    /// Date by which the operator must file the signed agreement with the
    /// regulator: 5 working days after signature (R12).
    #[serde(default)]
    pub filing_due: Option<chrono::NaiveDate>,
    /// When it was filed.
    #[serde(default)]
    pub filed_at: Option<DateTime<Utc>>,
    /// The risk report that halted it.
    #[serde(default)]
    pub halted_by_report: Option<String>,
    /// The tokenization master key generation its tokens are derived
    /// from, fixed at issue: its tokens stay the same for its whole life,
    /// and agreements issued after a rotation use the new key
    /// (`docs/keys.md`).
    #[serde(default = "first_generation")]
    pub token_generation: u32,
    /// Why it was terminated, by whom and when.
    #[serde(default)]
    pub termination: Option<Termination>,
}

/// An early end of an agreement by one of its parties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termination {
    /// The party that ended it.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Why.
    pub reason: String,
}

fn first_generation() -> u32 {
    1
}

impl Agreement {
    /// Issued by the operator on approving an application.
    pub fn issue(
        id: String,
        app: &Application,
        terms: Terms,
        valid_from: DateTime<Utc>,
        valid_until: DateTime<Utc>,
        by: &Actor,
    ) -> Result<Agreement> {
        by.require(Role::Operator)?;
        if app.status != ApplicationStatus::Approved {
            return Err(Error::IllegalState(format!(
                "application {} is not approved",
                app.id
            )));
        }
        if valid_until <= valid_from {
            return Err(Error::InvalidRequest("validity must end after it starts".into()));
        }
        Ok(Agreement {
            id,
            application_id: app.id.clone(),
            scenario_id: app.scenario_id.clone(),
            developer_id: app.developer_id.clone(),
            operator_id: by.id.clone(),
            terms,
            status: AgreementStatus::Issued,
            valid_from,
            valid_until,
            signed_at: None,
            filing_due: None,
            filed_at: None,
            halted_by_report: None,
            token_generation: first_generation(),
            termination: None,
        })
    }

    /// The developer countersigns; access opens, and the filing deadline
    /// starts.
    pub fn sign(&mut self, by: &Actor, at: DateTime<Utc>, calendar: &Calendar) -> Result<()> {
        by.require(Role::Developer)?;
        if by.id != self.developer_id {
            return Err(Error::Forbidden(
                "only the agreement's developer can sign it".into(),
            ));
        }
        if self.status != AgreementStatus::Issued {
            return Err(Error::IllegalState(format!(
                "agreement {} is not waiting for a signature",
                self.id
            )));
        }
        if at >= self.valid_until {
            return Err(Error::IllegalState(format!("agreement {} has expired", self.id)));
        }
        self.status = AgreementStatus::Active;
        self.signed_at = Some(at);
        self.filing_due = Some(calendar.add_working_days(at.date_naive(), FILING_DAYS));
        Ok(())
    }

    /// The operator files the signed agreement with the regulator (R12).
    pub fn file(&mut self, by: &Actor, at: DateTime<Utc>) -> Result<()> {
        by.require(Role::Operator)?;
        if self.signed_at.is_none() {
            return Err(Error::IllegalState(format!(
                "agreement {} is not signed yet",
                self.id
            )));
        }
        if self.filed_at.is_some() {
            return Err(Error::IllegalState(format!(
                "agreement {} was already filed",
                self.id
            )));
        }
        self.filed_at = Some(at);
        Ok(())
    }

    /// Signed but not filed with the regulator by its due date.
    pub fn filing_overdue(&self, today: chrono::NaiveDate) -> bool {
        self.filed_at.is_none() && self.filing_due.is_some_and(|d| today > d)
    }

    /// Ends the agreement early (R13): the operator, or its developer.
    pub fn terminate(&mut self, reason: String, by: &Actor, at: DateTime<Utc>) -> Result<()> {
        let party = by.role == Role::Operator || (by.role == Role::Developer && by.id == self.developer_id);
        if !party {
            return Err(Error::Forbidden(
                "only a party to the agreement can end it".into(),
            ));
        }
        if reason.trim().is_empty() {
            return Err(Error::InvalidRequest("a termination needs a reason".into()));
        }
        match self.status {
            AgreementStatus::Issued | AgreementStatus::Active => {
                self.status = AgreementStatus::Terminated;
                self.termination = Some(Termination {
                    by: by.id.clone(),
                    at,
                    reason,
                });
                Ok(())
            }
            AgreementStatus::Terminated | AgreementStatus::Halted => Err(Error::IllegalState(format!(
                "agreement {} is already closed",
                self.id
            ))),
        }
    }

    /// Stops access at once (R20); running jobs release nothing more.
    pub fn halt(&mut self, report_id: &str) -> Result<()> {
        match self.status {
            AgreementStatus::Issued | AgreementStatus::Active => {
                self.status = AgreementStatus::Halted;
                self.halted_by_report = Some(report_id.to_string());
                Ok(())
            }
            AgreementStatus::Terminated | AgreementStatus::Halted => Err(Error::IllegalState(format!(
                "agreement {} is already closed",
                self.id
            ))),
        }
    }

    /// Fails unless the agreement opens access at `now`.
    pub fn check_open(&self, now: DateTime<Utc>) -> Result<()> {
        match self.status {
            AgreementStatus::Issued => Err(Error::AgreementClosed(format!(
                "agreement {} is not signed",
                self.id
            ))),
            AgreementStatus::Terminated => Err(Error::AgreementClosed(format!(
                "agreement {} was terminated",
                self.id
            ))),
            AgreementStatus::Halted => Err(Error::AgreementClosed(format!(
                "agreement {} was halted after a risk report",
                self.id
            ))),
            AgreementStatus::Active if now < self.valid_from => Err(Error::AgreementClosed(format!(
                "agreement {} is not yet valid",
                self.id
            ))),
            AgreementStatus::Active if now >= self.valid_until => Err(Error::AgreementClosed(format!(
                "agreement {} has expired",
                self.id
            ))),
            AgreementStatus::Active => Ok(()),
        }
    }
}

/// A data application: the developer's product built on released results,
/// reviewed for security and compliance before it is released (R19).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataApplication {
    /// `da_...`
    pub id: String,
    /// The developer.
    pub developer_id: String,
    /// Its organization.
    pub developer_org: String,
    /// The agreement whose results it uses.
    pub agreement_id: String,
    /// Product name.
    pub name: String,
    /// What it does and for whom.
    pub description: String,
    /// Jobs whose released results it uses.
    pub jobs: Vec<String>,
    /// The developer's own security and compliance assessment.
    pub assessment: String,
    /// Review state (submitted, approved, rejected).
    pub status: ApplicationStatus,
    /// When submitted.
    pub submitted_at: DateTime<Utc>,
    /// Reviewer.
    pub decided_by: Option<String>,
    /// When decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// Reason given.
    pub reason: Option<String>,
}

impl DataApplication {
    /// Submitted by a developer; `jobs` must be its own released jobs
    /// (checked by the caller, who knows them).
    #[allow(
        clippy::too_many_arguments,
        reason = "one field per material of the submission"
    )]
    pub fn submit(
        id: String,
        agreement_id: String,
        name: String,
        description: String,
        jobs: Vec<String>,
        assessment: String,
        by: &Actor,
        at: DateTime<Utc>,
    ) -> Result<DataApplication> {
        by.require(Role::Developer)?;
        for (what, v) in [
            ("name", &name),
            ("description", &description),
            ("assessment", &assessment),
        ] {
            if v.trim().is_empty() {
                return Err(Error::InvalidRequest(format!("the {what} is required")));
            }
        }
        if jobs.is_empty() {
            return Err(Error::InvalidRequest(
                "name the jobs whose results it uses".into(),
            ));
        }
        Ok(DataApplication {
            id,
            developer_id: by.id.clone(),
            developer_org: by.org.clone(),
            agreement_id,
            name,
            description,
            jobs,
            assessment,
            status: ApplicationStatus::Submitted,
            submitted_at: at,
            decided_by: None,
            decided_at: None,
            reason: None,
        })
    }

    /// The operator's compliance review.
    pub fn decide(
        &mut self,
        approve: bool,
        reason: Option<String>,
        by: &Actor,
        at: DateTime<Utc>,
    ) -> Result<()> {
        Review {
            what: format!("data application {}", self.id),
            requester: Requester {
                id: &self.developer_id,
                org: &self.developer_org,
            },
            status: &mut self.status,
            decided_by: &mut self.decided_by,
            decided_at: &mut self.decided_at,
            reason: &mut self.reason,
        }
        .decide(approve, reason, by, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    use crate::party::test_actor as actor;

    fn spec() -> ScenarioSpec {
        serde_json::from_value(serde_json::json!({
            "name": "credit", "class": "credit", "purpose": "p",
            "tables": [{"dataset": "t", "columns": []}],
            "release": {"epsilon_total": 1.0, "epsilon_per_query": 0.5, "min_group_size": 5}
        }))
        .unwrap()
    }

    fn materials() -> Materials {
        Materials {
            qualifications: "bank licence".into(),
            data_needs: "n".into(),
            development_method: "m".into(),
            security_measures: "s".into(),
            security_officer: "Li".into(),
        }
    }

    #[test]
    fn full_lifecycle() {
        let now = Utc::now();
        let op = actor("op", Role::Operator);
        let reg = actor("reg", Role::Regulator);
        let dev = actor("dev", Role::Developer);
        let mut sc = Scenario::propose("sc".into(), spec(), &op, now).unwrap();
        let premature = Application::submit("ap".into(), &sc, materials(), &dev, now, &Calendar::default());
        assert!(matches!(premature, Err(Error::IllegalState(_))));
        sc.decide(true, None, &reg, now).unwrap();
        assert!(matches!(
            sc.decide(true, None, &reg, now),
            Err(Error::IllegalState(_))
        ));
        let mut app =
            Application::submit("ap".into(), &sc, materials(), &dev, now, &Calendar::default()).unwrap();
        assert!(matches!(
            app.decide(true, None, &dev, now),
            Err(Error::Forbidden(_))
        ));
        app.decide(true, None, &op, now).unwrap();
        let mut ag = Agreement::issue(
            "ag".into(),
            &app,
            Terms::default(),
            now,
            now + Duration::days(30),
            &op,
        )
        .unwrap();
        assert!(matches!(ag.check_open(now), Err(Error::AgreementClosed(_))));
        assert!(matches!(
            ag.sign(&actor("other", Role::Developer), now, &Calendar::default()),
            Err(Error::Forbidden(_))
        ));
        ag.sign(&dev, now, &Calendar::default()).unwrap();
        ag.check_open(now).unwrap();
        assert!(matches!(
            ag.check_open(now + Duration::days(31)),
            Err(Error::AgreementClosed(_))
        ));
    }

    #[test]
    fn rejection_needs_reason_and_materials_are_complete() {
        let now = Utc::now();
        let op = actor("op", Role::Operator);
        let mut sc = Scenario::propose("sc".into(), spec(), &op, now).unwrap();
        assert!(sc
            .decide(false, None, &actor("reg", Role::Regulator), now)
            .is_err());
        assert_eq!(
            sc.status,
            ScenarioStatus::Pending,
            "a failed transition changes nothing"
        );
        assert!(matches!(
            sc.decide(true, None, &op, now),
            Err(Error::Forbidden(_))
        ));
        let mut m = materials();
        m.security_officer = " ".into();
        assert_eq!(
            m.validate(),
            Err(Error::InvalidRequest(
                "missing materials: security_officer".into()
            ))
        );
    }

    #[test]
    fn a_class_is_approved_once() {
        let now = Utc::now();
        let op = actor("op", Role::Operator);
        let mut first = Scenario::propose("sc1".into(), spec(), &op, now).unwrap();
        let mut second = Scenario::propose("sc2".into(), spec(), &op, now).unwrap();
        let reg = actor("reg", Role::Regulator);
        // Not before the regulator approved the class.
        assert!(second.approve_under_class(&first, &reg, now).is_err());
        first.decide(true, None, &reg, now).unwrap();
        second.approve_under_class(&first, &reg, now).unwrap();
        assert_eq!(second.status, ScenarioStatus::Approved);
        let mut other = spec();
        other.class = "another".into();
        let mut third = Scenario::propose("sc3".into(), other, &op, now).unwrap();
        assert!(third.approve_under_class(&first, &reg, now).is_err());
        assert_eq!(third.status, ScenarioStatus::Pending);
    }

    #[test]
    fn nobody_decides_for_their_own_organization() {
        let now = Utc::now();
        let op = actor("op", Role::Operator);
        let mut sc = Scenario::propose("sc".into(), spec(), &op, now).unwrap();
        sc.decide(true, None, &actor("reg", Role::Regulator), now)
            .unwrap();
        let dev = Actor {
            org: "org_group".into(),
            ..actor("dev", Role::Developer)
        };
        let seconded = Actor {
            org: "org_group".into(),
            ..actor("op2", Role::Operator)
        };
        let mut app =
            Application::submit("ap".into(), &sc, materials(), &dev, now, &Calendar::default()).unwrap();
        let before = app.clone();
        assert!(matches!(
            app.decide(true, None, &seconded, now),
            Err(Error::Forbidden(_))
        ));
        assert_eq!(app, before, "a refused decision changes nothing");
        app.decide(true, None, &op, now).unwrap();
    }

    /// An account created by (a chain from) the requester's organization
    /// decides nothing that organization asks for: scenarios, applications
    /// and data applications alike.
    #[test]
    fn nobody_decides_with_an_account_their_organization_created() {
        use crate::party::Creator;
        let now = Utc::now();
        let op = actor("op", Role::Operator);
        let made_by = |who: &Actor| Creator {
            id: who.id.clone(),
            org: who.org.clone(),
        };
        // A regulator the operator manufactured (a store from before the
        // creation rule), directly and through a chain of accounts.
        let direct = Actor {
            creators: vec![made_by(&op)],
            ..actor("reg_fake", Role::Regulator)
        };
        let staff = Actor {
            org: op.org.clone(),
            ..actor("op_staff", Role::Operator)
        };
        let chained = Actor {
            creators: vec![made_by(&actor("reg_mid", Role::Regulator)), made_by(&staff)],
            ..actor("reg_chain", Role::Regulator)
        };
        let mut sc = Scenario::propose("sc".into(), spec(), &op, now).unwrap();
        let before = sc.clone();
        for fake in [&direct, &chained] {
            assert!(matches!(
                sc.decide(true, None, fake, now),
                Err(Error::Forbidden(_))
            ));
            assert_eq!(sc, before, "a refused decision changes nothing");
        }
        sc.decide(true, None, &actor("reg", Role::Regulator), now)
            .unwrap();

        // An operator account a developer's organization had created does
        // not decide that developer's application or data application.
        let dev = actor("dev", Role::Developer);
        let planted = Actor {
            creators: vec![Creator {
                id: "pt_someone".into(),
                org: dev.org.clone(),
            }],
            ..actor("op_planted", Role::Operator)
        };
        let mut app =
            Application::submit("ap".into(), &sc, materials(), &dev, now, &Calendar::default()).unwrap();
        let before = app.clone();
        assert!(matches!(
            app.decide(true, None, &planted, now),
            Err(Error::Forbidden(_))
        ));
        assert_eq!(app, before);
        let mut da = DataApplication::submit(
            "da".into(),
            "ag".into(),
            "n".into(),
            "d".into(),
            vec!["jb".into()],
            "a".into(),
            &dev,
            now,
        )
        .unwrap();
        let before = da.clone();
        assert!(matches!(
            da.decide(true, None, &planted, now),
            Err(Error::Forbidden(_))
        ));
        assert_eq!(da, before);
        da.decide(true, None, &op, now).unwrap();
    }

    /// A class approval by a regulator the operator's organization created
    /// (a store from before I16) approves no later scenario of the class.
    #[test]
    fn a_manufactured_class_approval_approves_nothing_further() {
        use crate::party::Creator;
        let now = Utc::now();
        let op = actor("op", Role::Operator);
        let fake = Actor {
            creators: vec![Creator {
                id: op.id.clone(),
                org: op.org.clone(),
            }],
            ..actor("reg_fake", Role::Regulator)
        };
        let mut first = Scenario::propose("sc1".into(), spec(), &op, now).unwrap();
        // As it was stored before the rule.
        first.status = ScenarioStatus::Approved;
        first.decided_by = Some(fake.id.clone());
        let mut second = Scenario::propose("sc2".into(), spec(), &op, now).unwrap();
        let before = second.clone();
        assert!(matches!(
            second.approve_under_class(&first, &fake, now),
            Err(Error::Forbidden(_))
        ));
        assert_eq!(second, before);
        // Nor under another name for the decider.
        assert!(second
            .approve_under_class(&first, &actor("reg", Role::Regulator), now)
            .is_err());
        assert_eq!(second, before);
    }

    #[test]
    fn signing_an_expired_agreement_fails() {
        let now = Utc::now();
        let op = actor("op", Role::Operator);
        let dev = actor("dev", Role::Developer);
        let mut sc = Scenario::propose("sc".into(), spec(), &op, now).unwrap();
        sc.decide(true, None, &actor("reg", Role::Regulator), now)
            .unwrap();
        let mut app =
            Application::submit("ap".into(), &sc, materials(), &dev, now, &Calendar::default()).unwrap();
        app.decide(true, None, &op, now).unwrap();
        let mut ag = Agreement::issue(
            "ag".into(),
            &app,
            Terms::default(),
            now,
            now + Duration::days(1),
            &op,
        )
        .unwrap();
        assert!(matches!(
            ag.sign(&dev, now + Duration::days(2), &Calendar::default()),
            Err(Error::IllegalState(_))
        ));
        assert_eq!(ag.status, AgreementStatus::Issued);
    }
}
