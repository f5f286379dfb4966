//! The one mapping from errors to HTTP. Services return
//! [`ServiceError`](crate::error::ServiceError) (no transport); here each
//! kind gets its status, and every error is answered as
//! `{"error": {"code", "message"}}`: client errors with their stable code
//! and a message naming the problem, internal errors logged and answered
//! with a generic message, `retry_later` with `Retry-After`.

use crate::error::{ServiceError, ServiceResult};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered over HTTP: a service error, answered as mapped here.
pub type ApiError = ServiceError;

/// Result type of the handlers.
pub type ApiResult<T> = ServiceResult<T>;

/// HTTP status of an error.
pub(super) fn status(e: &ApiError) -> StatusCode {
    match e {
        ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::Conflict(_) => StatusCode::CONFLICT,
        ApiError::PolicyViolation(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ApiError::BudgetExhausted(_) => StatusCode::CONFLICT,
        ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::ResourcesExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
        ApiError::RetryLater(..) => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let (status, code) = (status(&self), self.code());
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = Json(json!({"error": {"code": code, "message": self.to_string()}}));
        match &self {
            ApiError::RetryLater(_, secs) => (
                status,
                [(axum::http::header::RETRY_AFTER, secs.to_string())],
                body,
            )
                .into_response(),
            _ => (status, body).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_keeps_its_status_and_code() {
        let m = |e: ApiError| (status(&e).as_u16(), e.code());
        assert_eq!(m(ApiError::BadRequest(String::new())), (400, "bad_request"));
        assert_eq!(m(ApiError::Unauthorized), (401, "unauthorized"));
        assert_eq!(m(ApiError::Forbidden(String::new())), (403, "forbidden"));
        assert_eq!(m(ApiError::NotFound(String::new())), (404, "not_found"));
        assert_eq!(m(ApiError::Conflict(String::new())), (409, "conflict"));
        assert_eq!(
            m(ApiError::PolicyViolation(String::new())),
            (422, "policy_violation")
        );
        assert_eq!(
            m(ApiError::BudgetExhausted(String::new())),
            (409, "budget_exhausted")
        );
        assert_eq!(m(ApiError::TooLarge(String::new())), (413, "too_large"));
        assert_eq!(
            m(ApiError::ResourcesExhausted(String::new())),
            (429, "resources_exhausted")
        );
        assert_eq!(m(ApiError::RetryLater(String::new(), 3)), (429, "retry_later"));
        assert_eq!(m(ApiError::Internal(String::new())), (500, "internal"));
        let r = ApiError::RetryLater("later".into(), 3).into_response();
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "3");
    }
}
