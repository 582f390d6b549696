//! Errors: construction mistakes and adapters breaking the driving contract.
//!
//! Protocol failures (a 403, a short body, a digest mismatch, a flash failure) are not
//! errors: they are outcomes reported to the cloud and the application.

/// An adapter or configuration mistake. The agent's state is unchanged when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The product key is empty, too long, or not `[A-Za-z0-9]`.
    #[error("invalid product key: 1 to 32 characters of [A-Za-z0-9]")]
    InvalidProductKey,
    /// The device name is not 4 to 32 characters of letters, digits and `-_.@:`.
    #[error("invalid device name: 4 to 32 characters of letters, digits and -_.@:")]
    InvalidDeviceName,
    /// The running version or module name is not a valid version string.
    #[error("invalid running version or module name")]
    InvalidVersion,
    /// A configuration value is out of range; the text names it.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// An HTTP event carries a fetch id the agent never issued.
    #[error("HTTP event for a fetch that was never requested")]
    UnknownFetch,
    /// Body bytes before the response status of the fetch.
    #[error("HTTP body before the response status")]
    BodyBeforeResponse,
    /// More body bytes reported read than [`crate::Agent::body_buffer`] lent.
    #[error("more body bytes filled than the agent lent")]
    BodyOverfilled,
    /// A second response status for the same fetch.
    #[error("duplicate HTTP response status for one fetch")]
    DuplicateResponse,
    /// A write result while no write was requested.
    #[error("write result while no write is pending")]
    UnexpectedWriteResult,
    /// A record-save result while no save was requested.
    #[error("record result while no record save is pending")]
    UnexpectedRecordResult,
    /// A read result while no read was requested, or longer than the read asked for.
    #[error("read result while no read is pending, or longer than asked")]
    UnexpectedReadResult,
    /// An activation result while no activation was requested.
    #[error("activation result while no activation is pending")]
    UnexpectedActivationResult,
    /// A health verdict while none was asked for.
    #[error("health verdict while no health check is pending")]
    UnexpectedHealthVerdict,
    /// An accept or decline while no task is offered.
    #[error("task decision while no task is offered")]
    UnexpectedDecision,
    /// A new input arrived before the previous input's actions were drained.
    #[error("actions were not drained before the next input")]
    ActionsNotDrained,
}
