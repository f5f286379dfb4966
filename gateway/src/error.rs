//! Errors of the gateway's services (store, jobs, ledger, storage, ...):
//! what went wrong, classified by what the caller may do about it, with a
//! message naming the problem, and no transport. The HTTP layer maps them
//! to responses in one place (`api::error`); the command line prints
//! [`ServiceError::detail`].

/// An error of a service. Variants name the HTTP status `api` answers
/// them with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
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

impl ServiceError {
    /// "No such thing": the id as given (escaped, never interpreted).
    pub fn not_found(what: &str, id: &str) -> ServiceError {
        ServiceError::NotFound(format!("no {what} {}", id.escape_debug()))
    }

    /// The whole message, with an internal error's detail (for the log and
    /// for the command line, never for an HTTP answer).
    pub fn detail(&self) -> String {
        match self {
            ServiceError::Internal(d) => d.clone(),
            other => other.to_string(),
        }
    }

    /// Stable code of the error's kind (the `code` of an API error body).
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::BadRequest(_) => "bad_request",
            ServiceError::Unauthorized => "unauthorized",
            ServiceError::Forbidden(_) => "forbidden",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::PolicyViolation(_) => "policy_violation",
            ServiceError::BudgetExhausted(_) => "budget_exhausted",
            ServiceError::TooLarge(_) => "too_large",
            ServiceError::ResourcesExhausted(_) => "resources_exhausted",
            ServiceError::RetryLater(..) => "retry_later",
            ServiceError::Internal(_) => "internal",
        }
    }
}

impl From<scenarios::Error> for ServiceError {
    fn from(e: scenarios::Error) -> Self {
        use scenarios::Error as E;
        match e {
            E::InvalidRequest(m) => ServiceError::BadRequest(m),
            E::IllegalState(m) => ServiceError::Conflict(m),
            E::Forbidden(m) => ServiceError::Forbidden(m),
            E::UnsafeParameter(m) => ServiceError::PolicyViolation(format!("unsafe parameter: {m}")),
            E::AgreementClosed(m) => ServiceError::Forbidden(format!("agreement closed: {m}")),
            E::BudgetExhausted(m) => ServiceError::BudgetExhausted(m),
            E::LedgerInvalid(m) => ServiceError::Internal(m),
        }
    }
}

impl From<sandbox::Error> for ServiceError {
    fn from(e: sandbox::Error) -> Self {
        use sandbox::Error as E;
        match e {
            E::InvalidQuery(m) => ServiceError::BadRequest(format!("invalid query: {m}")),
            E::PolicyViolation(m) => ServiceError::PolicyViolation(format!("policy violation: {m}")),
            E::BudgetExhausted(m) => ServiceError::BudgetExhausted(m),
            E::AccessClosed(m) => ServiceError::Forbidden(format!("access closed: {m}")),
            E::InvalidDataset(m) => ServiceError::BadRequest(format!("invalid dataset: {m}")),
            E::ResourcesExhausted(m) => ServiceError::ResourcesExhausted(m),
            E::Internal(m) => ServiceError::Internal(m),
        }
    }
}

impl From<runtime::JobError> for ServiceError {
    fn from(e: runtime::JobError) -> Self {
        match e {
            runtime::JobError::InvalidModule(m) => ServiceError::BadRequest(format!("invalid module: {m}")),
            runtime::JobError::Internal(m) => ServiceError::Internal(m),
            other => ServiceError::Conflict(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for ServiceError {
    fn from(e: serde_json::Error) -> Self {
        ServiceError::Internal(format!("json: {e}"))
    }
}

/// Result type of the gateway's services.
pub type ServiceResult<T> = Result<T, ServiceError>;
