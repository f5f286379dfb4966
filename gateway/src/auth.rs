//! Authentication: every request but the health check carries
//! `Authorization: Bearer <token>`. Tokens are random, shown once at
//! creation, and stored only as SHA-256 hashes (R24, R27).

use crate::error::ApiError;
use crate::keys::token_hash;
use crate::state::AppState;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::Json;
use scenarios::party::Actor;
use serde::de::DeserializeOwned;

/// The authenticated party of a request.
#[derive(Debug, Clone)]
pub struct Auth(pub Actor);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let token = header.strip_prefix("Bearer ").ok_or(ApiError::Unauthorized)?.trim();
        if token.is_empty() || token.len() > 200 {
            return Err(ApiError::Unauthorized);
        }
        let hash = token_hash(token);
        let store = state.store.clone();
        let party = tokio::task::spawn_blocking(move || store.party_by_token(&hash))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??
            .ok_or(ApiError::Unauthorized)?;
        Ok(Auth(Actor { id: party.id, role: party.role, name: party.name }))
    }
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
