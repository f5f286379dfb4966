//! Feedback between the sides of the platform: scenario demands and the
//! data needs they leave unmet (R9), and data-quality flags that the
//! providing department verifies and corrects or rejects (R6). Every
//! outcome is kept.

use crate::party::{Actor, Role};
use crate::{required, Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How the operator answered a demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DemandOutcome {
    /// A scenario was proposed for it.
    ScenarioProposed,
    /// It needs data the platform does not have: the needs are fed back to
    /// the data side.
    DataUnmet,
    /// Declined, with a reason.
    Declined,
}

/// A scenario demand (R9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demand {
    /// `dm_...`
    pub id: String,
    /// Who asked.
    pub by: String,
    /// What for.
    pub title: String,
    /// The use and the questions to answer.
    pub description: String,
    /// Data it needs, in the asker's words.
    pub data_needed: Vec<String>,
    /// When.
    pub at: DateTime<Utc>,
    /// The operator's answer, once given.
    pub outcome: Option<DemandOutcome>,
    /// The scenario proposed for it.
    pub scenario_id: Option<String>,
    /// Data needs the platform cannot meet, fed back to providers.
    pub unmet_needs: Vec<String>,
    /// Why, in the operator's words.
    pub answer: Option<String>,
    /// When answered.
    pub answered_at: Option<DateTime<Utc>>,
}

impl Demand {
    /// Raised by a developer.
    pub fn raise(
        id: String,
        title: String,
        description: String,
        data_needed: Vec<String>,
        by: &Actor,
        at: DateTime<Utc>,
    ) -> Result<Demand> {
        by.require(Role::Developer)?;
        required("the title", &title)?;
        required("the description", &description)?;
        if data_needed.is_empty() || data_needed.len() > 50 {
            return Err(Error::InvalidRequest("list between 1 and 50 data needs".into()));
        }
        for d in &data_needed {
            required("the data need", d)?;
        }
        Ok(Demand {
            id,
            by: by.id.clone(),
            title,
            description,
            data_needed,
            at,
            outcome: None,
            scenario_id: None,
            unmet_needs: Vec::new(),
            answer: None,
            answered_at: None,
        })
    }

    /// The operator's answer, once.
    pub fn answer(
        &mut self,
        outcome: DemandOutcome,
        scenario_id: Option<String>,
        unmet_needs: Vec<String>,
        answer: String,
        by: &Actor,
        at: DateTime<Utc>,
    ) -> Result<()> {
        by.require(Role::Operator)?;
        if self.outcome.is_some() {
            return Err(Error::IllegalState(format!(
                "demand {} was already answered",
                self.id
            )));
        }
        required("the answer", &answer)?;
        match outcome {
            DemandOutcome::ScenarioProposed if scenario_id.is_none() => {
                return Err(Error::InvalidRequest("name the scenario proposed".into()))
            }
            DemandOutcome::DataUnmet if unmet_needs.is_empty() => {
                return Err(Error::InvalidRequest("list the unmet data needs".into()))
            }
            _ => {}
        }
        for n in &unmet_needs {
            required("the unmet need", n)?;
        }
        self.outcome = Some(outcome);
        self.scenario_id = scenario_id;
        self.unmet_needs = unmet_needs;
        self.answer = Some(answer);
        self.answered_at = Some(at);
        Ok(())
    }
}

/// The outcome of a quality flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagStatus {
    /// Waiting for the provider.
    Open,
    /// Verified and corrected (a new version was registered).
    Corrected,
    /// Verified; the data is right.
    Rejected,
}

/// A data-quality flag (R6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QualityFlag {
    /// `qf_...`
    pub id: String,
    /// Dataset name.
    pub dataset: String,
    /// Version the flag is about.
    pub dataset_version: u32,
    /// Column, if one.
    pub column: Option<String>,
    /// What looks wrong (never a protected value: flaggers see only samples
    /// and aggregates).
    pub description: String,
    /// Who flagged it.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
    /// State.
    pub status: FlagStatus,
    /// The provider's finding.
    pub finding: Option<String>,
    /// The corrected version, when corrected.
    pub corrected_version: Option<u32>,
    /// When it was resolved.
    pub resolved_at: Option<DateTime<Utc>>,
}

impl QualityFlag {
    /// Raised by any party but the dataset's provider.
    pub fn raise(
        id: String,
        dataset: String,
        dataset_version: u32,
        column: Option<String>,
        description: String,
        by: &Actor,
        at: DateTime<Utc>,
    ) -> Result<QualityFlag> {
        required("the description", &description)?;
        Ok(QualityFlag {
            id,
            dataset,
            dataset_version,
            column,
            description,
            by: by.id.clone(),
            at,
            status: FlagStatus::Open,
            finding: None,
            corrected_version: None,
            resolved_at: None,
        })
    }

    /// The provider's outcome. A correction must name a version registered
    /// after the flagged one.
    pub fn resolve(
        &mut self,
        corrected_version: Option<u32>,
        finding: String,
        by: &Actor,
        at: DateTime<Utc>,
    ) -> Result<()> {
        by.require(Role::Provider)?;
        if self.status != FlagStatus::Open {
            return Err(Error::IllegalState(format!(
                "flag {} was already resolved",
                self.id
            )));
        }
        required("the finding", &finding)?;
        if corrected_version.is_some_and(|v| v <= self.dataset_version) {
            return Err(Error::InvalidRequest(format!(
                "the correction must be a version after {}",
                self.dataset_version
            )));
        }
        self.status = if corrected_version.is_some() {
            FlagStatus::Corrected
        } else {
            FlagStatus::Rejected
        };
        self.corrected_version = corrected_version;
        self.finding = Some(finding);
        self.resolved_at = Some(at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(role: Role) -> Actor {
        crate::party::test_actor(&format!("pt_{role}"), role)
    }

    #[test]
    fn demands_are_answered_once_with_what_is_missing() {
        let now = Utc::now();
        let mut d = Demand::raise(
            "dm".into(),
            "Green loans".into(),
            "price loans by emissions".into(),
            vec!["emissions per enterprise".into()],
            &actor(Role::Developer),
            now,
        )
        .unwrap();
        let op = actor(Role::Operator);
        assert!(d
            .answer(DemandOutcome::DataUnmet, None, vec![], "x".into(), &op, now)
            .is_err());
        d.answer(
            DemandOutcome::DataUnmet,
            None,
            vec!["emissions per enterprise".into()],
            "no emissions data yet".into(),
            &op,
            now,
        )
        .unwrap();
        assert!(d
            .answer(DemandOutcome::Declined, None, vec![], "again".into(), &op, now)
            .is_err());
    }

    #[test]
    fn flags_are_corrected_by_a_later_version_or_rejected() {
        let now = Utc::now();
        let dev = actor(Role::Developer);
        let mut f = QualityFlag::raise(
            "qf".into(),
            "tax".into(),
            2,
            None,
            "grades look shifted".into(),
            &dev,
            now,
        )
        .unwrap();
        let p = actor(Role::Provider);
        assert!(f.resolve(Some(2), "fixed".into(), &p, now).is_err());
        assert!(f.resolve(None, "fine".into(), &dev, now).is_err());
        f.resolve(Some(3), "2024 grades re-imported".into(), &p, now)
            .unwrap();
        assert_eq!(f.status, FlagStatus::Corrected);
        assert!(f.resolve(None, "again".into(), &p, now).is_err());
    }
}
