//! Authentication: every request but the health check carries
//! `Authorization: Bearer <token>`. Tokens are random, shown once at
//! creation, and stored only as SHA-256 hashes (R24, R27).

use super::ApiError;
use crate::keys::token_hash;
use crate::state::AppState;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use scenarios::party::{Actor, Role};
use serde::de::DeserializeOwned;

/// The authenticated party of a request.
#[derive(Debug, Clone)]
pub struct Auth(pub Actor);

/// Resolves the bearer token of a request to its party.
async fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<Actor, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthorized)?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or(ApiError::Unauthorized)?
        .trim();
    if token.is_empty() || token.len() > 200 {
        return Err(ApiError::Unauthorized);
    }
    let hash = token_hash(token);
    crate::parties::actor_by_token(state, hash)
        .await?
        .ok_or(ApiError::Unauthorized)
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(actor) = parts.extensions.get::<Actor>() {
            return Ok(Auth(actor.clone()));
        }
        Ok(Auth(authenticate(&parts.headers, state).await?))
    }
}

/// Middleware of a role's route prefix: authenticates, refuses every other
/// role with 403 before the request body is read, and hands the party to
/// the handler.
pub async fn require_role(
    State((state, role)): State<(AppState, Role)>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let actor = authenticate(req.headers(), &state).await?;
    if actor.role != role {
        return Err(ApiError::Forbidden(format!(
            "this route is for the {role} role, not {}",
            actor.role
        )));
    }
    req.extensions_mut().insert(actor);
    Ok(next.run(req).await)
}

/// A JSON body whose rejection is answered in the platform's error format.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(r) => Err(ApiError::BadRequest(r.body_text())),
        }
    }
}
