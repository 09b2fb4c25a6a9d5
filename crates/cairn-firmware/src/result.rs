//! Update errors and the LwM2M Firmware Update object's (/5) Update Result
//! resource (/5/0/5, OMA LwM2M object 5 version 1.x).

use crate::delta::DeltaError;
use crate::flash::FlashError;
use crate::manifest::ManifestError;
use crate::state::StateError;
use crate::storage::StorageError;

/// The Update Result resource (/5/0/5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum UpdateResult {
    Initial = 0,
    Success = 1,
    NotEnoughFlash = 2,
    OutOfRam = 3,
    ConnectionLost = 4,
    IntegrityCheckFailure = 5,
    UnsupportedPackageType = 6,
    InvalidUri = 7,
    UpdateFailed = 8,
    UnsupportedProtocol = 9,
    Cancelled = 10,
    Deferred = 11,
}

impl UpdateResult {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        use UpdateResult::*;
        Some(match code {
            0 => Initial,
            1 => Success,
            2 => NotEnoughFlash,
            3 => OutOfRam,
            4 => ConnectionLost,
            5 => IntegrityCheckFailure,
            6 => UnsupportedPackageType,
            7 => InvalidUri,
            8 => UpdateFailed,
            9 => UnsupportedProtocol,
            10 => Cancelled,
            11 => Deferred,
            _ => return None,
        })
    }
}

/// The State resource (/5/0/3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum UpdateState {
    Idle = 0,
    Downloading = 1,
    Downloaded = 2,
    Updating = 3,
}

/// Why a download, an install or a boot step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("delta: {0}")]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Flash(#[from] FlashError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the delta is for another base image than the one installed")]
    WrongPrecursor,
    #[error("the received package does not match the manifest's digest")]
    PayloadDigestMismatch,
    #[error("the image made from the package does not match the manifest's digest")]
    ImageDigestMismatch,
    #[error("the package is {needed} bytes, the area holds {available}")]
    TooLarge { needed: u64, available: u64 },
    #[error("a chunk at offset {offset} does not follow the {expected} bytes received")]
    OutOfOrder { offset: u64, expected: u64 },
    #[error("the package runs to {received} bytes, the manifest says {expected}")]
    PayloadTooLong { received: u64, expected: u64 },
    #[error("the package ends after {received} of {expected} bytes")]
    Incomplete { received: u64, expected: u64 },
    #[error("the device has no installed image to update from")]
    NotProvisioned,
    #[error("not possible in state {0:?}")]
    WrongState(UpdateState),
}

impl UpdateError {
    /// True when the power went during the operation (the device restarts).
    pub fn is_power_loss(&self) -> bool {
        matches!(
            self,
            UpdateError::Flash(FlashError::PowerLoss)
                | UpdateError::Storage(StorageError::Flash(FlashError::PowerLoss))
                | UpdateError::Delta(DeltaError::Flash(FlashError::PowerLoss))
        )
    }
}

/// The Update Result to report for `error`.
pub fn update_result(error: &UpdateError) -> UpdateResult {
    use UpdateResult::*;
    match error {
        UpdateError::Manifest(e) => match e {
            ManifestError::TooLong(_)
            | ManifestError::Envelope(_)
            | ManifestError::UnsupportedAlgorithm
            | ManifestError::Payload(_)
            | ManifestError::WrongVendor { .. }
            | ManifestError::WrongClass { .. }
            | ManifestError::HardwareTooOld { .. }
            | ManifestError::BootloaderTooOld { .. } => UnsupportedPackageType,
            ManifestError::TrailingData
            | ManifestError::MissingKeyId
            | ManifestError::UnknownKey
            | ManifestError::BadSignature
            | ManifestError::Rollback { .. }
            | ManifestError::Expired { .. } => IntegrityCheckFailure,
        },
        UpdateError::Delta(DeltaError::Flash(_)) => UpdateFailed,
        UpdateError::Delta(DeltaError::NotInPlaceApplicable | DeltaError::NotAPatch) => {
            UnsupportedPackageType
        }
        UpdateError::Delta(_) => IntegrityCheckFailure,
        UpdateError::WrongPrecursor => UnsupportedPackageType,
        UpdateError::PayloadDigestMismatch | UpdateError::ImageDigestMismatch => {
            IntegrityCheckFailure
        }
        UpdateError::OutOfOrder { .. }
        | UpdateError::Incomplete { .. }
        | UpdateError::PayloadTooLong { .. } => IntegrityCheckFailure,
        UpdateError::TooLarge { .. } => NotEnoughFlash,
        UpdateError::Flash(_) | UpdateError::Storage(_) | UpdateError::State(_) => UpdateFailed,
        UpdateError::NotProvisioned | UpdateError::WrongState(_) => UpdateFailed,
    }
}

impl From<&UpdateError> for UpdateResult {
    fn from(error: &UpdateError) -> Self {
        update_result(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 0..=11 {
            assert_eq!(
                UpdateResult::from_code(code).map(UpdateResult::code),
                Some(code)
            );
        }
        assert_eq!(UpdateResult::from_code(12), None);
    }

    #[test]
    fn security_refusals_are_five_or_six() {
        assert_eq!(update_result(&ManifestError::BadSignature.into()).code(), 5);
        assert_eq!(update_result(&ManifestError::UnknownKey.into()).code(), 5);
        assert_eq!(
            update_result(
                &ManifestError::Rollback {
                    installed: 2,
                    found: 1
                }
                .into()
            )
            .code(),
            5
        );
        assert_eq!(update_result(&UpdateError::WrongPrecursor).code(), 6);
        assert_eq!(
            update_result(&UpdateError::TooLarge {
                needed: 2,
                available: 1
            })
            .code(),
            2
        );
        assert_eq!(update_result(&FlashError::Unreliable.into()).code(), 8);
    }
}
