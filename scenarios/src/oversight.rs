//! Oversight: objections that suspend data at once (R7), stop-and-report
//! halts with their risk reports (R20), and security incidents with the
//! state of their emergency plan (R25).

use crate::party::{Actor, Role};
use crate::{required, Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What an objection is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ObjectionTarget {
    /// A whole dataset.
    Dataset,
    /// The rows of one data subject (privacy unit) in a dataset. The unit
    /// value itself is stored for filtering and never shown: views show
    /// its SHA-256.
    Subject {
        /// The privacy unit's value, as text.
        unit: String,
    },
}

/// State of an objection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectionStatus {
    /// Filed: the target is suspended from every job until resolved.
    Open,
    /// Found right: a subject stays excluded; a dataset stays suspended
    /// until its provider registers a corrected version.
    Upheld,
    /// Found wrong: the suspension is lifted.
    Dismissed,
}

/// What an objection claims, as filed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Dataset name.
    pub dataset: String,
    /// Its current version.
    pub dataset_version: u32,
    /// Dataset or one subject.
    pub target: ObjectionTarget,
    /// Who objects.
    pub objector: String,
    /// Why.
    pub grounds: String,
}

/// An objection by an affected party (R7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Objection {
    /// `ob_...`
    pub id: String,
    /// Dataset name.
    pub dataset: String,
    /// The dataset version current when the objection was filed.
    pub dataset_version: u32,
    /// Dataset or one subject.
    pub target: ObjectionTarget,
    /// Who objects (the affected party, as they identify themselves).
    pub objector: String,
    /// Why.
    pub grounds: String,
    /// State.
    pub status: ObjectionStatus,
    /// Party who filed it on the platform.
    pub filed_by: String,
    /// When.
    pub filed_at: DateTime<Utc>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// When.
    pub resolved_at: Option<DateTime<Utc>>,
    /// The resolution's reason.
    pub resolution: Option<String>,
}

impl Objection {
    /// Files an objection. The operator files for an affected member of
    /// the public; a provider may object to data about its own work.
    pub fn file(id: String, claim: Claim, by: &Actor, at: DateTime<Utc>) -> Result<Objection> {
        let Claim {
            dataset,
            dataset_version,
            target,
            objector,
            grounds,
        } = claim;
        if !matches!(by.role, Role::Operator | Role::Provider) {
            return Err(Error::Forbidden(
                "objections are filed by the operator or a data provider".into(),
            ));
        }
        required("objector", &objector)?;
        required("grounds", &grounds)?;
        if let ObjectionTarget::Subject { unit } = &target {
            required("the subject's unit", unit)?;
        }
        Ok(Objection {
            id,
            dataset,
            dataset_version,
            target,
            objector,
            grounds,
            status: ObjectionStatus::Open,
            filed_by: by.id.clone(),
            filed_at: at,
            resolved_by: None,
            resolved_at: None,
            resolution: None,
        })
    }

    /// Resolves an open objection, with a reason either way.
    pub fn resolve(&mut self, upheld: bool, reason: String, by: &Actor, at: DateTime<Utc>) -> Result<()> {
        by.require(Role::Operator)?;
        if self.status != ObjectionStatus::Open {
            return Err(Error::IllegalState(format!(
                "objection {} was already resolved",
                self.id
            )));
        }
        required("a reason", &reason)?;
        self.status = if upheld {
            ObjectionStatus::Upheld
        } else {
            ObjectionStatus::Dismissed
        };
        self.resolved_by = Some(by.id.clone());
        self.resolved_at = Some(at);
        self.resolution = Some(reason);
        Ok(())
    }

    /// Whether version `version` of the dataset is withheld from jobs.
    pub fn suspends_dataset(&self, version: u32) -> bool {
        self.target == ObjectionTarget::Dataset
            && match self.status {
                ObjectionStatus::Open => true,
                ObjectionStatus::Upheld => version <= self.dataset_version,
                ObjectionStatus::Dismissed => false,
            }
    }

    /// The unit whose rows are withheld from jobs, if any.
    pub fn excluded_unit(&self) -> Option<&str> {
        match (&self.target, self.status) {
            (ObjectionTarget::Subject { unit }, ObjectionStatus::Open | ObjectionStatus::Upheld) => {
                Some(unit)
            }
            _ => None,
        }
    }
}

/// What a halt stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum HaltScope {
    /// One agreement.
    Agreement(String),
    /// A scenario and every agreement under it.
    Scenario(String),
}

/// A stop-and-report (R20): access halted at once and a risk report filed
/// with the regulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskReport {
    /// `rr_...`
    pub id: String,
    /// What was halted.
    pub scope: HaltScope,
    /// Who halted it.
    pub filed_by: String,
    /// Their role.
    pub role: Role,
    /// When.
    pub filed_at: DateTime<Utc>,
    /// The risk found.
    pub risk: String,
    /// Measures taken or proposed.
    pub measures: String,
    /// Jobs stopped by the halt.
    pub stopped_jobs: Vec<String>,
}

impl RiskReport {
    /// A report by an operator (any scope) or a developer (its own
    /// agreements only, checked by the caller).
    pub fn file(
        id: String,
        scope: HaltScope,
        risk: String,
        measures: String,
        by: &Actor,
        at: DateTime<Utc>,
    ) -> Result<RiskReport> {
        match (&scope, by.role) {
            (_, Role::Operator) | (HaltScope::Agreement(_), Role::Developer) => {}
            _ => {
                return Err(Error::Forbidden(
                    "a scenario is halted by the operator; a developer halts its own agreements".into(),
                ))
            }
        }
        required("risk", &risk)?;
        required("measures", &measures)?;
        Ok(RiskReport {
            id,
            scope,
            filed_by: by.id.clone(),
            role: by.role,
            filed_at: at,
            risk,
            measures,
            stopped_jobs: Vec::new(),
        })
    }
}

/// Severity of a security incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Minor.
    Low,
    /// Limited harm.
    Medium,
    /// Serious harm.
    High,
    /// Large-scale or ongoing harm.
    Critical,
}

/// State of the emergency plan for an incident (R25), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    /// Reported; the plan is not yet running.
    Reported,
    /// The emergency plan is running.
    PlanActivated,
    /// The harm is contained.
    Contained,
    /// Services and data are recovered.
    Recovered,
    /// Closed after review.
    Closed,
}

/// One step of an incident's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentStep {
    /// State entered.
    pub state: PlanState,
    /// What happened.
    pub note: String,
    /// Who recorded it.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A security incident (R25).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// `in_...`
    pub id: String,
    /// Severity.
    pub severity: Severity,
    /// What happened.
    pub summary: String,
    /// Current plan state.
    pub state: PlanState,
    /// Every state with its note, oldest first.
    pub history: Vec<IncidentStep>,
}

impl Incident {
    /// Reported by the operator.
    pub fn report(
        id: String,
        severity: Severity,
        summary: String,
        by: &Actor,
        at: DateTime<Utc>,
    ) -> Result<Incident> {
        by.require(Role::Operator)?;
        required("summary", &summary)?;
        Ok(Incident {
            id,
            severity,
            history: vec![IncidentStep {
                state: PlanState::Reported,
                note: summary.clone(),
                by: by.id.clone(),
                at,
            }],
            summary,
            state: PlanState::Reported,
        })
    }

    /// Moves the plan forward (states may be skipped, never revisited).
    pub fn advance(&mut self, to: PlanState, note: String, by: &Actor, at: DateTime<Utc>) -> Result<()> {
        by.require(Role::Operator)?;
        required("note", &note)?;
        if to <= self.state {
            return Err(Error::IllegalState(format!(
                "incident {} is already {:?}; plan states only move forward",
                self.id, self.state
            )));
        }
        self.state = to;
        self.history.push(IncidentStep {
            state: to,
            note,
            by: by.id.clone(),
            at,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(role: Role) -> Actor {
        crate::party::test_actor(&format!("pt_{role}"), role)
    }

    fn claim(target: ObjectionTarget, grounds: &str) -> Claim {
        Claim {
            dataset: "tax".into(),
            dataset_version: 2,
            target,
            objector: "a citizen".into(),
            grounds: grounds.into(),
        }
    }

    fn objection(target: ObjectionTarget) -> Objection {
        Objection::file(
            "ob_1".into(),
            claim(target, "my record is wrong"),
            &actor(Role::Operator),
            Utc::now(),
        )
        .unwrap()
    }

    #[test]
    fn an_open_objection_suspends_until_resolved() {
        let mut o = objection(ObjectionTarget::Dataset);
        assert!(o.suspends_dataset(2) && o.suspends_dataset(3));
        // Upheld: the objected versions stay out; a corrected one is in.
        o.resolve(
            true,
            "records corrected in v3".into(),
            &actor(Role::Operator),
            Utc::now(),
        )
        .unwrap();
        assert!(o.suspends_dataset(2) && !o.suspends_dataset(3));
        // Resolving twice is refused and changes nothing.
        let before = o.clone();
        assert!(o
            .resolve(false, "again".into(), &actor(Role::Operator), Utc::now())
            .is_err());
        assert_eq!(o, before);

        let mut s = objection(ObjectionTarget::Subject { unit: "E1".into() });
        assert!(!s.suspends_dataset(2));
        assert_eq!(s.excluded_unit(), Some("E1"));
        s.resolve(false, "no basis".into(), &actor(Role::Operator), Utc::now())
            .unwrap();
        assert_eq!(s.excluded_unit(), None);
    }

    #[test]
    fn objections_need_grounds_and_the_right_role() {
        let e = Objection::file(
            "ob".into(),
            claim(ObjectionTarget::Dataset, " "),
            &actor(Role::Operator),
            Utc::now(),
        );
        assert!(matches!(e, Err(Error::InvalidRequest(_))));
        let e = Objection::file(
            "ob".into(),
            claim(ObjectionTarget::Dataset, "y"),
            &actor(Role::Developer),
            Utc::now(),
        );
        assert!(matches!(e, Err(Error::Forbidden(_))));
        let mut o = objection(ObjectionTarget::Dataset);
        assert!(o
            .resolve(true, "".into(), &actor(Role::Operator), Utc::now())
            .is_err());
        assert!(o
            .resolve(true, "r".into(), &actor(Role::Provider), Utc::now())
            .is_err());
        assert_eq!(o.status, ObjectionStatus::Open);
    }

    #[test]
    fn developers_halt_only_agreements() {
        let dev = actor(Role::Developer);
        assert!(RiskReport::file(
            "rr".into(),
            HaltScope::Scenario("sc".into()),
            "r".into(),
            "m".into(),
            &dev,
            Utc::now()
        )
        .is_err());
        assert!(RiskReport::file(
            "rr".into(),
            HaltScope::Agreement("ag".into()),
            "r".into(),
            "m".into(),
            &dev,
            Utc::now()
        )
        .is_ok());
    }

    #[test]
    fn incident_plans_only_move_forward() {
        let op = actor(Role::Operator);
        let mut i = Incident::report(
            "in".into(),
            Severity::High,
            "leak suspected".into(),
            &op,
            Utc::now(),
        )
        .unwrap();
        i.advance(PlanState::PlanActivated, "plan started".into(), &op, Utc::now())
            .unwrap();
        i.advance(PlanState::Recovered, "restored".into(), &op, Utc::now())
            .unwrap();
        assert!(i
            .advance(PlanState::Contained, "late".into(), &op, Utc::now())
            .is_err());
        assert_eq!(i.history.len(), 3);
        assert_eq!(i.state, PlanState::Recovered);
    }
}
