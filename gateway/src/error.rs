//! The one mapping from every error of the platform to an HTTP response.
//! Client errors carry a stable code and a message naming the problem;
//! internal errors are logged and answered with a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered over HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no or unknown credentials.
    #[error("authentication required: send `Authorization: Bearer <token>`")]
    Unauthorized,
    /// 403: the role or identity may not do this, or access is closed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such record visible to the caller.
    #[error("{0}")]
    NotFound(String),
    /// 409: the record's state does not allow this.
    #[error("{0}")]
    Conflict(String),
    /// 422: well formed but refused by policy.
    #[error("{0}")]
    PolicyViolation(String),
    /// 409: the privacy budget is used up.
    #[error("privacy budget exhausted: {0}")]
    BudgetExhausted(String),
    /// 413: too large.
    #[error("{0}")]
    TooLarge(String),
    /// 429: a resource limit was reached.
    #[error("{0}")]
    ResourcesExhausted(String),
    /// 429 with `Retry-After` (seconds): the caller is over one of its
    /// own limits and may try again then.
    #[error("{0}")]
    RetryLater(String, u64),
    /// 500: a fault of the platform; the detail goes to the log only.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The whole message, with an internal error's detail (for the log and
    /// for the command line, never for an HTTP answer).
    pub fn detail(&self) -> String {
        match self {
            ApiError::Internal(d) => d.clone(),
            other => other.to_string(),
        }
    }

    /// HTTP status and stable code.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PolicyViolation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "policy_violation"),
            ApiError::BudgetExhausted(_) => (StatusCode::CONFLICT, "budget_exhausted"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::ResourcesExhausted(_) => (StatusCode::TOO_MANY_REQUESTS, "resources_exhausted"),
            ApiError::RetryLater(..) => (StatusCode::TOO_MANY_REQUESTS, "retry_later"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
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

impl From<scenarios::Error> for ApiError {
    fn from(e: scenarios::Error) -> Self {
        use scenarios::Error as E;
        match e {
            E::InvalidRequest(m) => ApiError::BadRequest(m),
            E::IllegalState(m) => ApiError::Conflict(m),
            E::Forbidden(m) => ApiError::Forbidden(m),
            E::UnsafeParameter(m) => ApiError::PolicyViolation(format!("unsafe parameter: {m}")),
            E::AgreementClosed(m) => ApiError::Forbidden(format!("agreement closed: {m}")),
            E::BudgetExhausted(m) => ApiError::BudgetExhausted(m),
            E::LedgerInvalid(m) => ApiError::Internal(m),
        }
    }
}

impl From<sandbox::Error> for ApiError {
    fn from(e: sandbox::Error) -> Self {
        use sandbox::Error as E;
        match e {
            E::InvalidQuery(m) => ApiError::BadRequest(format!("invalid query: {m}")),
            E::PolicyViolation(m) => ApiError::PolicyViolation(format!("policy violation: {m}")),
            E::BudgetExhausted(m) => ApiError::BudgetExhausted(m),
            E::AccessClosed(m) => ApiError::Forbidden(format!("access closed: {m}")),
            E::InvalidDataset(m) => ApiError::BadRequest(format!("invalid dataset: {m}")),
            E::ResourcesExhausted(m) => ApiError::ResourcesExhausted(m),
            E::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<runtime::JobError> for ApiError {
    fn from(e: runtime::JobError) -> Self {
        match e {
            runtime::JobError::InvalidModule(m) => ApiError::BadRequest(format!("invalid module: {m}")),
            runtime::JobError::Internal(m) => ApiError::Internal(m),
            other => ApiError::Conflict(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::Internal(format!("store: {e}"))
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::Internal(format!("json: {e}"))
    }
}

/// Result type of the gateway.
pub type ApiResult<T> = Result<T, ApiError>;
