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
    tokio::spawn(sign_checkpoints(state.clone()));
    let app = crate::router(state);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Signs a checkpoint every `checkpoint_every` while the ledger grows, so
/// that the signed history regulators hold never lags far behind.
async fn sign_checkpoints(state: AppState) {
    let mut tick = tokio::time::interval(state.config.checkpoint_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = state.clone();
        let signed =
            tokio::task::spawn_blocking(move || s.ledger.checkpoint_if_grown(&s.store, &s.keys)).await;
        match signed {
            Ok(Ok(Some(cp))) => tracing::debug!(size = cp.checkpoint.size, "signed a ledger checkpoint"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not sign a ledger checkpoint"),
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
