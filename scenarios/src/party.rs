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
    /// Who created the account, nearest first: its creator, the creator's
    /// creator, and so on up to a party from the bootstrap (empty for a
    /// bootstrap party). Decisions read it (see [`check_independent`]).
    #[serde(default)]
    pub creators: Vec<Creator>,
}

/// One party in the chain of accounts that created another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creator {
    /// The creating party (`pt_...`).
    pub id: String,
    /// Its organization (`org_...`).
    pub org: String,
}

/// Longest chain of creators followed; a longer one is refused as corrupt.
pub const MAX_CREATOR_CHAIN: usize = 64;

/// Separation of duties at account creation (I16 in
/// docs/invariants.md): may `by` create, or take over the token of, a
/// party of `role` in organization `org` (`None`: a new organization of
/// its own)? On success, the organization the party joins: `Some(org)` for
/// an existing one, `None` for a new one.
///
/// - Regulator accounts are created only by a regulator, for its own
///   staff, in its own organization (or at bootstrap).
/// - An operator creates operators only for its own staff, in its own
///   organization; providers and developers in an organization other than
///   its own; never a regulator.
/// - Providers and developers create no party.
///
/// So no party creates a party that can approve what its own
/// organization proposes: the regulator (who approves the operator's
/// scenarios) is out of the operator's reach, and the operator's own staff
/// share its organization, which decides nothing of its own.
pub fn may_create(by: &Actor, role: Role, org: Option<&str>) -> crate::Result<Option<String>> {
    let forbidden = |why: &str| Err(crate::Error::Forbidden(why.to_string()));
    let own = |org: Option<&str>, why: &str| match org {
        None => Ok(Some(by.org.clone())),
        Some(o) if o == by.org => Ok(Some(by.org.clone())),
        Some(_) => forbidden(why),
    };
    match (by.role, role) {
        (Role::Provider | Role::Developer, _) => forbidden(&format!("a {} creates no party", by.role)),
        (Role::Regulator, Role::Regulator) => own(
            org,
            "a regulator creates regulator accounts only for its own staff, in its own organization",
        ),
        (Role::Regulator, _) => forbidden("a regulator creates only regulator accounts, for its own staff"),
        (Role::Operator, Role::Regulator) => forbidden("regulator accounts are created only by a regulator"),
        (Role::Operator, Role::Operator) => own(
            org,
            "an operator creates operator accounts only for its own staff, in its own organization",
        ),
        (Role::Operator, Role::Provider | Role::Developer) => match org {
            Some(o) if o == by.org => forbidden(&format!(
                "a {role} belongs to an organization other than the operator's"
            )),
            other => Ok(other.map(str::to_string)),
        },
    }
}

/// Separation of duties at a decision (I16): `by` may not decide
/// a request made by `requester_id` of organization `requester_org` when it
/// is that party, belongs to that organization, or its account was created
/// (directly or through a chain of accounts) by that party or by a member
/// of that organization.
pub fn check_independent(by: &Actor, requester_id: &str, requester_org: &str) -> crate::Result<()> {
    if by.id == requester_id {
        return Err(crate::Error::Forbidden(
            "nobody approves their own request".into(),
        ));
    }
    if !by.org.is_empty() && by.org == requester_org {
        return Err(crate::Error::Forbidden(
            "nobody decides a request of their own organization".into(),
        ));
    }
    if by
        .creators
        .iter()
        .any(|c| c.id == requester_id || (!c.org.is_empty() && c.org == requester_org))
    {
        return Err(crate::Error::Forbidden(
            "nobody decides a request of the organization that created their account".into(),
        ));
    }
    Ok(())
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
        creators: Vec::new(),
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

    /// Who may create which role, each role as each role (I16).
    #[test]
    fn who_may_create_which_role() {
        let roles = [Role::Provider, Role::Operator, Role::Developer, Role::Regulator];
        for by_role in roles {
            let by = test_actor("me", by_role);
            for role in roles {
                let allowed = matches!(
                    (by_role, role),
                    (Role::Regulator, Role::Regulator)
                        | (Role::Operator, Role::Operator | Role::Provider | Role::Developer)
                );
                let got = may_create(&by, role, None);
                assert_eq!(got.is_ok(), allowed, "{by_role} creating a {role}: {got:?}");
                if let Err(e) = got {
                    assert!(matches!(e, crate::Error::Forbidden(_)), "{e:?}");
                }
            }
        }
        let op = test_actor("op", Role::Operator);
        // Staff join the creator's organization, wherever they were asked to go.
        assert_eq!(
            may_create(&op, Role::Operator, None).unwrap(),
            Some(op.org.clone())
        );
        assert!(may_create(&op, Role::Operator, Some("org_elsewhere")).is_err());
        assert!(may_create(&op, Role::Regulator, Some("org_reg")).is_err());
        let reg = test_actor("reg", Role::Regulator);
        assert_eq!(
            may_create(&reg, Role::Regulator, None).unwrap(),
            Some(reg.org.clone())
        );
        assert!(may_create(&reg, Role::Regulator, Some(&op.org)).is_err());
        // Developers and providers are outside the operator's organization.
        assert_eq!(may_create(&op, Role::Developer, None).unwrap(), None);
        assert_eq!(
            may_create(&op, Role::Provider, Some("org_tax")).unwrap(),
            Some("org_tax".into())
        );
        assert!(may_create(&op, Role::Developer, Some(&op.org)).is_err());
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
