//! Starting the HTTP server and bootstrapping the first parties.

use crate::keys::{new_id, new_token};
use crate::state::AppState;
use crate::store::{append, NewEntry, Party, Store};
use chrono::Utc;
use scenarios::party::Role;
use serde_json::json;
use std::net::SocketAddr;

/// Serves the API on `listener` until the process is stopped.
pub async fn serve(state: AppState, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let closed = crate::jobs::recover_interrupted(&state)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if closed > 0 {
        tracing::warn!(jobs = closed, "closed jobs interrupted by the previous shutdown");
    }
    // Something is published before the first request.
    let s = state.clone();
    crate::store::blocking(move || s.ledger.publish(&s.store, &s.keys))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokio::spawn(publish_checkpoints(state.clone()));
    let app = crate::router(state);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Signs and publishes a checkpoint every [`crate::state::Config::publish_every`]
/// while the ledger grows, so that the signed history regulators hold never
/// lags far behind, and so that what everyone else sees of the ledger's
/// growth moves at this fixed pace (I14).
async fn publish_checkpoints(state: AppState) {
    let mut tick = tokio::time::interval(state.config.publish_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = state.clone();
        let published = tokio::task::spawn_blocking(move || s.ledger.publish(&s.store, &s.keys)).await;
        match published {
            Ok(Ok(cp)) => tracing::debug!(size = cp.checkpoint.size, "published a ledger checkpoint"),
            Ok(Err(e)) => tracing::error!(error = %e, "could not publish a ledger checkpoint"),
            Err(e) => tracing::error!(error = %e, "the checkpoint signer failed"),
        }
    }
}

/// Binds `addr` (use port 0 for any free port) and returns the listener and
/// the address actually bound.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// A party created by [`bootstrap`], with its one-time token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bootstrapped {
    /// Party id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Bearer token (shown once).
    pub token: String,
}

/// Creates the first operator and regulator. Refuses when an operator
/// already exists, so it cannot be used to mint new operator tokens later.
pub fn bootstrap(
    store: &Store,
    operator_name: &str,
    regulator_name: &str,
) -> anyhow::Result<Vec<Bootstrapped>> {
    if store
        .count_role(Role::Operator)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        > 0
    {
        anyhow::bail!("the platform is already bootstrapped: an operator exists");
    }
    let parties = [
        (operator_name.to_string(), Role::Operator),
        (regulator_name.to_string(), Role::Regulator),
    ];
    store
        .tx(move |tx| {
            let mut out = Vec::new();
            for (name, role) in parties {
                let (token, hash) = new_token();
                let org = crate::store::Organization {
                    id: new_id("org"),
                    name: name.clone(),
                    registration: None,
                    created_at: Utc::now().to_rfc3339(),
                    standing: Vec::new(),
                };
                crate::store::put(tx, &org)?;
                let p = Party {
                    id: new_id("pt"),
                    name,
                    role,
                    created_at: Utc::now().to_rfc3339(),
                    organization: org.id,
                    created_by: None,
                };
                Store::insert_party(tx, &p, &hash)?;
                append(
                    tx,
                    NewEntry::system("party.bootstrap", &p.id, json!({"name": p.name, "role": role})),
                    Utc::now(),
                )?;
                out.push(Bootstrapped {
                    id: p.id,
                    name: p.name,
                    role,
                    token,
                });
            }
            Ok(out)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
}
