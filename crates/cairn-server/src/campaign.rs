//! Firmware campaigns: one image to a set of devices, in waves, through each device's Firmware
//! Update object (/5, OMA LwM2M Core Appendix E.6), halting by itself when a wave fails too
//! often.
//!
//! For each device the campaign writes the Package URI (/5/0/1), follows the State (/5/0/3)
//! and Update Result (/5/0/5) by observation (and by reading them when notifications stop, as
//! they do when the device reboots into its new image), executes Update (/5/0/2) once the
//! package is Downloaded, and records the outcome: updated, failed with the device's Update
//! Result, or unreachable. Connection losses are retried. After each wave the failure rate is
//! checked against the campaign's threshold: above it, the campaign halts before the next wave.
//! The campaign's state is in the store after every change of wave and every few devices, and
//! a campaign that was running when the server stopped resumes when it starts again (devices
//! already updated are not touched again).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_lwm2m::node::{LwM2mNode, LwM2mResource, ResourceValue};
use cairn_lwm2m::{LwM2mPath, Value, WriteMode};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use crate::{LwM2mServer, ServerError};

/// What an operator asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignSpec {
    /// A name for people.
    pub name: String,
    /// The image (from the firmware repository).
    pub image_id: String,
    /// The endpoints to update, in the order the waves take them.
    pub targets: Vec<String>,
    /// The share of the targets done by the end of each wave, in percent, increasing and
    /// ending at 100 (for example 1, 10, 100).
    pub waves: Vec<u8>,
    /// A wave in which more than this share of devices failed halts the campaign (percent).
    pub max_failure_percent: f64,
    /// Devices updated at the same time.
    pub concurrency: usize,
    /// How long one device may take, download and update included.
    pub device_timeout_s: u64,
    /// How often a device operation is retried after a connection loss.
    pub retries: u32,
    /// The host devices download from (`coaps://{host}:{port}/fw/{id}`); by default the
    /// address of the server's socket (127.0.0.1 when it listens on every address).
    pub package_host: Option<String>,
}

impl CampaignSpec {
    /// A campaign with the usual waves (1 %, 10 %, 100 %) and a 5 % failure threshold.
    pub fn new(name: impl Into<String>, image_id: impl Into<String>, targets: Vec<String>) -> Self {
        CampaignSpec {
            name: name.into(),
            image_id: image_id.into(),
            targets,
            waves: vec![1, 10, 100],
            max_failure_percent: 5.0,
            concurrency: 64,
            device_timeout_s: 600,
            retries: 3,
            package_host: None,
        }
    }

    pub fn validate(&self) -> Result<(), CampaignError> {
        if self.targets.is_empty() {
            return Err(CampaignError::Invalid("no target devices"));
        }
        if self.waves.is_empty()
            || self.waves.windows(2).any(|w| w[0] >= w[1])
            || self.waves.last() != Some(&100)
            || self.waves[0] == 0
        {
            return Err(CampaignError::Invalid(
                "waves must increase from above 0 and end at 100",
            ));
        }
        if !(0.0..=100.0).contains(&self.max_failure_percent) {
            return Err(CampaignError::Invalid(
                "the failure threshold is a percentage",
            ));
        }
        if self.concurrency == 0 || self.device_timeout_s == 0 {
            return Err(CampaignError::Invalid(
                "concurrency and device timeout must be positive",
            ));
        }
        Ok(())
    }

    /// The end (exclusive index into `targets`) of each wave.
    fn wave_ends(&self) -> Vec<usize> {
        let total = self.targets.len();
        let mut ends: Vec<usize> = self
            .waves
            .iter()
            .map(|percent| (total * usize::from(*percent)).div_ceil(100).max(1))
            .collect();
        ends.dedup();
        ends
    }
}

/// Where a device is in a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceOutcome {
    Pending,
    InProgress,
    /// The device reported Update Result 1 (firmware updated successfully).
    Updated,
    /// The device reported this Update Result (2–11), or refused the operation.
    Failed {
        result: u8,
    },
    /// The device did not answer, or took longer than the device timeout.
    Unreachable,
    /// The campaign was cancelled before this device's turn.
    Cancelled,
}

impl DeviceOutcome {
    fn is_failure(self) -> bool {
        matches!(
            self,
            DeviceOutcome::Failed { .. } | DeviceOutcome::Unreachable
        )
    }
}

/// Where a campaign is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CampaignState {
    Running,
    Paused,
    /// Stopped by itself: a wave failed too often.
    Halted,
    Cancelled,
    Completed,
}

/// A campaign and every device's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignStatus {
    pub id: String,
    pub spec: CampaignSpec,
    pub state: CampaignState,
    /// The wave being run (or the last one run), from 0.
    pub wave: usize,
    pub devices: BTreeMap<String, DeviceOutcome>,
    pub halt_reason: Option<String>,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
}

/// How many devices are in each outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignCounts {
    pub pending: usize,
    pub in_progress: usize,
    pub updated: usize,
    pub failed: usize,
    pub unreachable: usize,
    pub cancelled: usize,
}

impl CampaignStatus {
    pub fn counts(&self) -> CampaignCounts {
        let mut counts = CampaignCounts::default();
        for outcome in self.devices.values() {
            match outcome {
                DeviceOutcome::Pending => counts.pending += 1,
                DeviceOutcome::InProgress => counts.in_progress += 1,
                DeviceOutcome::Updated => counts.updated += 1,
                DeviceOutcome::Failed { .. } => counts.failed += 1,
                DeviceOutcome::Unreachable => counts.unreachable += 1,
                DeviceOutcome::Cancelled => counts.cancelled += 1,
            }
        }
        counts
    }

    /// Whether the campaign will not change any more.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state,
            CampaignState::Halted | CampaignState::Cancelled | CampaignState::Completed
        )
    }
}

/// Why a campaign could not be started or changed.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("invalid campaign: {0}")]
    Invalid(&'static str),
    #[error("no firmware image {0:?}")]
    UnknownImage(String),
    #[error("no campaign {0:?}")]
    Unknown(String),
    #[error("the campaign is {0:?}")]
    Finished(CampaignState),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// What the operator asks of a running campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Run,
    Pause,
    Cancel,
}

/// A running campaign's shared state.
pub(crate) struct Running {
    pub(crate) status: Arc<Mutex<CampaignStatus>>,
    pub(crate) control: watch::Sender<Control>,
}

const STATE: LwM2mPath = LwM2mPath::Resource(5, 0, 3);
const RESULT: LwM2mPath = LwM2mPath::Resource(5, 0, 5);
const PACKAGE_URI: LwM2mPath = LwM2mPath::Resource(5, 0, 1);
const UPDATE: LwM2mPath = LwM2mPath::Resource(5, 0, 2);

/// Firmware Update states (/5/0/3).
const IDLE: i64 = 0;
const DOWNLOADED: i64 = 2;

/// Update Result 1: firmware updated successfully.
const SUCCESS: i64 = 1;

fn status_of(shared: &Mutex<CampaignStatus>) -> std::sync::MutexGuard<'_, CampaignStatus> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a campaign to its end (or until the server stops).
pub(crate) async fn run(
    server: LwM2mServer,
    status: Arc<Mutex<CampaignStatus>>,
    mut control: watch::Receiver<Control>,
) {
    let (spec, id) = {
        let status = status_of(&status);
        (status.spec.clone(), status.id.clone())
    };
    let ends = spec.wave_ends();
    let first_wave = status_of(&status).wave;
    let mut start = if first_wave == 0 {
        0
    } else {
        ends[first_wave - 1]
    };
    for (wave, &end) in ends.iter().enumerate().skip(first_wave) {
        status_of(&status).wave = wave;
        server.save_campaign(&status).await;
        let devices: Vec<String> = spec.targets[start..end].to_vec();
        let semaphore = Arc::new(Semaphore::new(spec.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for endpoint in devices.iter().cloned() {
            // Pause holds back the next device; cancel stops the campaign.
            loop {
                let wanted = *control.borrow_and_update();
                match wanted {
                    Control::Run => break,
                    Control::Cancel => {
                        tasks.abort_all();
                        finish_cancelled(&server, &status).await;
                        return;
                    }
                    Control::Pause => {
                        status_of(&status).state = CampaignState::Paused;
                        server.save_campaign(&status).await;
                        if control.changed().await.is_err() {
                            return;
                        }
                        status_of(&status).state = CampaignState::Running;
                    }
                }
            }
            let done = status_of(&status)
                .devices
                .get(&endpoint)
                .is_some_and(|o| matches!(o, DeviceOutcome::Updated));
            if done {
                continue;
            }
            let Ok(permit) = semaphore.clone().acquire_owned().await else {
                return;
            };
            status_of(&status)
                .devices
                .insert(endpoint.clone(), DeviceOutcome::InProgress);
            let (server, status, spec) = (server.clone(), status.clone(), spec.clone());
            tasks.spawn(async move {
                let outcome = update_device(&server, &spec, &endpoint).await;
                tracing::info!(%endpoint, ?outcome, "campaign device finished");
                let save = {
                    let mut status = status_of(&status);
                    status.devices.insert(endpoint, outcome);
                    status.updated_at_ms = crate::unix_millis();
                    let finished = status
                        .devices
                        .values()
                        .filter(|o| {
                            !matches!(o, DeviceOutcome::Pending | DeviceOutcome::InProgress)
                        })
                        .count();
                    finished % 50 == 0
                };
                if save {
                    server.save_campaign(&status).await;
                }
                drop(permit);
            });
        }
        while tasks.join_next().await.is_some() {}
        // The wave is done: halt if it failed too often.
        let failed = {
            let status = status_of(&status);
            devices
                .iter()
                .filter(|d| status.devices.get(*d).is_some_and(|o| o.is_failure()))
                .count()
        };
        let rate = 100.0 * failed as f64 / devices.len().max(1) as f64;
        if rate > spec.max_failure_percent {
            {
                let mut status = status_of(&status);
                status.state = CampaignState::Halted;
                status.halt_reason = Some(format!(
                    "wave {} failed on {failed} of {} devices ({rate:.1} % > {} %)",
                    wave + 1,
                    devices.len(),
                    spec.max_failure_percent
                ));
                status.updated_at_ms = crate::unix_millis();
            }
            tracing::warn!(campaign = %id, wave, failed, "campaign halted");
            server.save_campaign(&status).await;
            return;
        }
        start = end;
    }
    {
        let mut status = status_of(&status);
        status.state = CampaignState::Completed;
        status.updated_at_ms = crate::unix_millis();
    }
    tracing::info!(campaign = %id, "campaign completed");
    server.save_campaign(&status).await;
}

async fn finish_cancelled(server: &LwM2mServer, status: &Arc<Mutex<CampaignStatus>>) {
    {
        let mut status = status_of(status);
        status.state = CampaignState::Cancelled;
        for outcome in status.devices.values_mut() {
            if matches!(outcome, DeviceOutcome::Pending | DeviceOutcome::InProgress) {
                *outcome = DeviceOutcome::Cancelled;
            }
        }
        status.updated_at_ms = crate::unix_millis();
    }
    server.save_campaign(status).await;
}

fn integer(node: &LwM2mNode) -> Option<i64> {
    match node {
        LwM2mNode::Resource(LwM2mResource {
            value: ResourceValue::Single(Value::Integer(v)),
            ..
        }) => Some(*v),
        LwM2mNode::Resource(LwM2mResource {
            value: ResourceValue::Single(Value::UnsignedInteger(v)),
            ..
        }) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// One device through download and update; never longer than the device timeout.
async fn update_device(server: &LwM2mServer, spec: &CampaignSpec, endpoint: &str) -> DeviceOutcome {
    let limit = Duration::from_secs(spec.device_timeout_s);
    match tokio::time::timeout(limit, drive_device(server, spec, endpoint)).await {
        Ok(outcome) => outcome,
        Err(_) => DeviceOutcome::Unreachable,
    }
}

/// Retries `operation` after connection losses (timeouts, transport errors).
async fn retrying<T, F, Fut>(retries: u32, mut operation: F) -> Result<T, ServerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ServerError>>,
{
    let mut attempt = 0;
    loop {
        match operation().await {
            Err(
                ServerError::Timeout(_) | ServerError::Transport(_) | ServerError::QueueTimeout(_),
            ) if attempt < retries => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

async fn drive_device(server: &LwM2mServer, spec: &CampaignSpec, endpoint: &str) -> DeviceOutcome {
    let Some(registration) = server.registration(endpoint) else {
        return DeviceOutcome::Unreachable;
    };
    let secure = crate::registration::is_secure(&registration);
    let path = format!("/fw/{}", spec.image_id);
    let Some(uri) = server.package_uri(secure, spec.package_host.as_deref(), &path) else {
        return DeviceOutcome::Unreachable;
    };
    let quick = server.with_timeout(Duration::from_secs(20));
    let read = |path: LwM2mPath| {
        let quick = quick.clone();
        async move { retrying(spec.retries, || quick.read(endpoint, path, None)).await }
    };
    // A device left in Downloading/Downloaded by an earlier attempt starts again from Idle:
    // writing an empty Package URI resets the state machine (Core E.6).
    match read(STATE).await.map(|n| integer(&n)) {
        Ok(Some(IDLE)) => {}
        Ok(_) => {
            let _ = write_uri(&quick, spec.retries, endpoint, "").await;
        }
        Err(ServerError::Device { .. }) => return DeviceOutcome::Failed { result: 0 },
        Err(_) => return DeviceOutcome::Unreachable,
    }
    // Follow state and result as the device reports them.
    let mut state_stream = quick
        .observe(endpoint, STATE, None)
        .await
        .ok()
        .map(|(_, s)| s);
    let mut result_stream = quick
        .observe(endpoint, RESULT, None)
        .await
        .ok()
        .map(|(_, s)| s);
    match write_uri(&quick, spec.retries, endpoint, &uri).await {
        Ok(()) => {}
        Err(ServerError::Device { .. }) => {
            // A retry after a lost answer is refused when the first attempt reached the
            // device (it is Downloaded by now, say): the device's Package URI tells.
            let written = read(PACKAGE_URI).await.ok().and_then(|n| string(&n));
            if written.as_deref() != Some(uri.as_str()) {
                return DeviceOutcome::Failed { result: 0 };
            }
        }
        Err(_) => return DeviceOutcome::Unreachable,
    }
    let mut executed = false;
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (state, result) = tokio::select! {
            Some(node) = next_of(&mut state_stream) => (integer(&node), None),
            Some(node) = next_of(&mut result_stream) => (None, integer(&node)),
            _ = poll.tick() => {
                // Notifications stop when the device reboots: ask.
                let state = read(STATE).await.ok().and_then(|n| integer(&n));
                let result = read(RESULT).await.ok().and_then(|n| integer(&n));
                (state, result)
            }
        };
        match result {
            Some(SUCCESS) if executed => return DeviceOutcome::Updated,
            Some(code @ 2..=11) => {
                return DeviceOutcome::Failed { result: code as u8 };
            }
            _ => {}
        }
        if state == Some(DOWNLOADED) && !executed {
            let mut attempts = 0;
            let execute = retrying(spec.retries, || {
                attempts += 1;
                quick.execute(endpoint, UPDATE, Vec::new())
            })
            .await;
            match execute {
                Ok(()) => executed = true,
                // A retry after a lost answer is refused when the first attempt reached
                // the device (it is Updating, or back in Idle): follow the result.
                Err(ServerError::Device { .. }) if attempts > 1 => executed = true,
                Err(ServerError::Device { .. }) => return DeviceOutcome::Failed { result: 0 },
                // The device may reboot before it answers: follow the result.
                Err(_) => executed = true,
            }
            // When the device reboots into the new image its observations end with it;
            // the poll above then reads the result.
        }
    }
}

fn string(node: &LwM2mNode) -> Option<String> {
    match node {
        LwM2mNode::Resource(LwM2mResource {
            value: ResourceValue::Single(Value::String(s)),
            ..
        }) => Some(s.clone()),
        _ => None,
    }
}

async fn next_of(stream: &mut Option<crate::Notifications>) -> Option<LwM2mNode> {
    match stream {
        Some(notifications) => match notifications.next().await {
            Some(node) => Some(node),
            None => {
                *stream = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

async fn write_uri(
    server: &LwM2mServer,
    retries: u32,
    endpoint: &str,
    uri: &str,
) -> Result<(), ServerError> {
    retrying(retries, || {
        server.write(
            endpoint,
            PACKAGE_URI,
            WriteMode::Replace,
            LwM2mNode::Resource(LwM2mResource::single(1, Value::String(uri.to_owned()))),
            Some(cairn_coap::ContentFormat::TEXT_PLAIN),
        )
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_split_the_targets_and_bad_specs_are_refused() {
        let targets: Vec<String> = (0..1000).map(|i| format!("d{i}")).collect();
        let spec = CampaignSpec::new("c", "img", targets.clone());
        assert_eq!(spec.wave_ends(), vec![10, 100, 1000]);
        spec.validate().unwrap();
        let small = CampaignSpec::new("c", "img", targets[..3].to_vec());
        assert_eq!(small.wave_ends(), vec![1, 3]);
        for waves in [
            vec![],
            vec![50],
            vec![10, 10, 100],
            vec![0, 100],
            vec![60, 30, 100],
        ] {
            let spec = CampaignSpec {
                waves,
                ..CampaignSpec::new("c", "img", targets.clone())
            };
            assert!(spec.validate().is_err(), "{:?}", spec.waves);
        }
        assert!(CampaignSpec::new("c", "img", vec![]).validate().is_err());
    }
}
