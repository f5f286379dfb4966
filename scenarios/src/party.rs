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
