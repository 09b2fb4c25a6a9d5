//! Runs the jobs of a client's Firmware Update object ([`FirmwareObject`]): pulls the
//! package block by block from a `coap://` or `coaps://` Package URI (each block goes to
//! flash as it arrives; a dropped connection resumes where the flash says), restarts the
//! device after Update, reports the new Firmware Version (/3/0/3) with a Registration
//! Update, and tells observers of State (/5/0/3) and Update Result (/5/0/5) what changed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_coap::{BlockValue, CoapUri, Code, Message, OptionNumber};
use cairn_firmware::{Flash, ProtectedStorage, UpdateResult, UpdateState};
use cairn_lwm2m::LwM2mPath;
use cairn_transport::CoapEndpoint;
use tokio::sync::mpsc;

use crate::core::ClientCore;
use crate::driver::ClientHandle;
use crate::objects::firmware::{FIRMWARE_UPDATE, FirmwareJob, FirmwareObject, UpdateOutcome};
use crate::objects::{DeviceObject, ids};

/// Decides whether the block at a package offset is lost with its connection (tests and
/// simulations inject faults with it).
pub type DropFault = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// How the agent downloads.
#[derive(Clone)]
pub struct PullOptions {
    /// Block size exponent asked for (6 = 1024 bytes).
    pub block_szx: u8,
    /// Failed requests tolerated in one download before it ends with Update Result 4.
    pub max_failures: u32,
    /// Wait before a failed download continues.
    pub retry_delay: Duration,
    /// Longest wait for one block (beyond CoAP's own limits, a request whose exchange never
    /// completes counts as a dropped connection).
    pub request_timeout: Duration,
    /// Fault injection: the connection drops when this returns true for a block.
    pub drop: Option<DropFault>,
    /// Bytes received in block payloads, dropped ones included.
    pub bytes_received: Arc<AtomicU64>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            block_szx: 6,
            max_failures: 20,
            retry_delay: Duration::from_millis(200),
            request_timeout: Duration::from_secs(100),
            drop: None,
            bytes_received: Arc::default(),
        }
    }
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("block_szx", &self.block_szx)
            .field("max_failures", &self.max_failures)
            .field("request_timeout", &self.request_timeout)
            .field("drop", &self.drop.is_some())
            .finish_non_exhaustive()
    }
}

/// The agent of one client. Create it with [`FirmwareAgent::attach`] once the client is
/// bound, then spawn [`FirmwareAgent::run`].
pub struct FirmwareAgent<F, S> {
    handle: ClientHandle,
    wake: mpsc::UnboundedReceiver<()>,
    options: PullOptions,
    last: (UpdateState, UpdateResult),
    _types: std::marker::PhantomData<fn() -> (F, S)>,
}

fn firmware<F, S>(core: &mut ClientCore) -> Option<&mut FirmwareObject<F, S>>
where
    F: Flash + Send + 'static,
    S: ProtectedStorage + Send + 'static,
{
    core.objects_mut()
        .object_mut::<FirmwareObject<F, S>>(FIRMWARE_UPDATE)
}

fn path(text: &str) -> LwM2mPath {
    text.parse().expect("a valid path")
}

/// Why one pass of a download stopped.
enum Pass {
    Done,
    Retry,
}

impl<F, S> FirmwareAgent<F, S>
where
    F: Flash + Send + 'static,
    S: ProtectedStorage + Send + 'static,
{
    /// Hooks the agent to the client's Firmware Update object. `None` when the client has
    /// no such object with these flash and storage types.
    pub fn attach(handle: ClientHandle, options: PullOptions) -> Option<Self> {
        let (sender, wake) = mpsc::unbounded_channel();
        let last = handle.with_core(|core| {
            let object = firmware::<F, S>(core)?;
            object.set_waker(move || {
                let _ = sender.send(());
            });
            Some((object.state(), object.result()))
        })?;
        Some(FirmwareAgent {
            handle,
            wake,
            options,
            last,
            _types: std::marker::PhantomData,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut FirmwareObject<F, S>) -> T) -> Option<T> {
        self.handle.with_core(|core| firmware::<F, S>(core).map(f))
    }

    /// Tells observers of State and Update Result when either changed.
    fn report(&mut self) {
        let Some(now) = self.with(|fw| (fw.state(), fw.result())) else {
            return;
        };
        if now.0 != self.last.0 {
            self.handle.changed(&path("/5/0/3"));
        }
        if now.1 != self.last.1 {
            self.handle.changed(&path("/5/0/5"));
        }
        self.last = now;
    }

    /// Runs jobs until the client goes away; `on_update` sees the outcome of every Update.
    pub async fn run(mut self, mut on_update: impl FnMut(&UpdateOutcome) + Send) {
        while self.wake.recv().await.is_some() {
            loop {
                self.report();
                let Some(job) = self.with(FirmwareObject::take_job).flatten() else {
                    break;
                };
                match job {
                    FirmwareJob::Download { uri, generation } => {
                        self.download(&uri, generation).await;
                    }
                    FirmwareJob::Update => {
                        let outcome = self
                            .with(FirmwareObject::run_update)
                            .unwrap_or(UpdateOutcome::Bricked);
                        if let UpdateOutcome::Updated { version } = &outcome {
                            let version = version.clone();
                            self.handle.with_core(|core| {
                                if let Some(device) =
                                    core.objects_mut().object_mut::<DeviceObject>(ids::DEVICE)
                                {
                                    device.set_firmware_version(version);
                                }
                            });
                            self.handle.changed(&path("/3/0/3"));
                        }
                        // The restarted device tells its servers it is back.
                        self.handle.trigger_update();
                        on_update(&outcome);
                    }
                }
            }
        }
    }

    fn current(&self, generation: u64) -> bool {
        self.with(|fw| fw.generation() == generation)
            .unwrap_or(false)
    }

    /// Pulls the package at `uri`, resuming after every dropped connection.
    async fn download(&mut self, uri: &str, generation: u64) {
        let target = CoapUri::parse(uri).ok().and_then(|parsed| {
            let ip: IpAddr = parsed.host.trim_matches(['[', ']']).parse().ok()?;
            Some((parsed, SocketAddr::new(ip, 0)))
        });
        let Some((parsed, address)) = target else {
            self.with(|fw| fw.abort_pull(generation, UpdateResult::InvalidUri));
            return;
        };
        let address = SocketAddr::new(address.ip(), parsed.port);
        let endpoint = match self.handle.endpoint_to(address) {
            Some(endpoint) => endpoint,
            None if !parsed.secure => {
                let local = if address.is_ipv4() {
                    SocketAddr::from(([0, 0, 0, 0], 0))
                } else {
                    SocketAddr::from(([0u16; 8], 0))
                };
                match CoapEndpoint::bind(local, cairn_coap::Config::default(), None).await {
                    Ok(endpoint) => Arc::new(endpoint),
                    Err(_) => {
                        self.with(|fw| fw.abort_pull(generation, UpdateResult::ConnectionLost));
                        return;
                    }
                }
            }
            // No session with that host: the device has no credentials for it.
            None => {
                self.with(|fw| fw.abort_pull(generation, UpdateResult::InvalidUri));
                return;
            }
        };
        let mut request = Message::request(Code::GET);
        parsed.apply(&mut request);
        let mut failures = 0;
        let mut etag = None;
        loop {
            match self
                .pass(&endpoint, address, &request, generation, &mut etag)
                .await
            {
                Pass::Done => break,
                Pass::Retry => {
                    failures += 1;
                    if failures > self.options.max_failures {
                        self.with(|fw| fw.abort_pull(generation, UpdateResult::ConnectionLost));
                        break;
                    }
                    self.report();
                    tokio::time::sleep(self.options.retry_delay).await;
                    if !self.current(generation) {
                        break;
                    }
                }
            }
        }
        self.report();
    }

    /// One connection's worth of download, from where the device holds the package (the
    /// start after a restart, which forgets the manifest held in RAM). Every block carries
    /// the package's ETag: a different one starts the download over.
    async fn pass(
        &mut self,
        endpoint: &CoapEndpoint,
        address: SocketAddr,
        request: &Message,
        generation: u64,
        etag_in_use: &mut Option<Vec<u8>>,
    ) -> Pass {
        if matches!(
            self.with(|fw| fw.state()),
            Some(UpdateState::Downloaded | UpdateState::Updating)
        ) {
            // The power went after the package was complete and checked.
            return Pass::Done;
        }
        let mut szx = self.options.block_szx.min(6);
        let resume = self.with(|fw| fw.pull_resume_offset()).unwrap_or(0);
        let mut num = u32::try_from(resume / (16u64 << szx)).unwrap_or(u32::MAX);
        // Whether this pass already stepped back from a block past the package's end.
        let mut stepped_back = false;
        loop {
            if !self.current(generation) {
                return Pass::Done;
            }
            let response = match tokio::time::timeout(
                self.options.request_timeout,
                endpoint.request_block(address, request.clone(), num, szx),
            )
            .await
            {
                Ok(Ok(response)) => response,
                // A failed request, or one whose exchange never completed: the connection
                // dropped, and the next pass resumes where the flash says.
                Ok(Err(_)) | Err(_) => return Pass::Retry,
            };
            if response.code == Code::BAD_OPTION && num > 0 && !stepped_back {
                // Every byte was in flash before a restart and the package ends on a block
                // boundary: the resume asked for the block past its end, which RFC 7959
                // answers with 4.02. The last block again ends the download.
                stepped_back = true;
                num -= 1;
                continue;
            }
            if response.code != Code::CONTENT {
                let result = if response.code == Code::NOT_FOUND {
                    UpdateResult::InvalidUri
                } else {
                    UpdateResult::ConnectionLost
                };
                self.with(|fw| fw.abort_pull(generation, result));
                return Pass::Done;
            }
            let block = response
                .options
                .get(OptionNumber::BLOCK2)
                .and_then(BlockValue::decode)
                .unwrap_or(BlockValue {
                    num: 0,
                    more: false,
                    szx,
                });
            let offset = block.offset() as u64;
            self.options
                .bytes_received
                .fetch_add(response.payload.len() as u64, Ordering::Relaxed);
            if self.options.drop.as_ref().is_some_and(|drop| drop(offset)) {
                return Pass::Retry;
            }
            let etag = response
                .options
                .get(OptionNumber::ETAG)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            if etag_in_use.as_ref().is_some_and(|known| *known != etag) {
                // The package changed at its source: start over from its first block.
                self.with(FirmwareObject::reset_stream);
                *etag_in_use = None;
                num = 0;
                continue;
            }
            *etag_in_use = Some(etag.clone());
            let written =
                self.with(|fw| fw.write_pulled(generation, offset, &response.payload, &etag));
            match written {
                Some(Ok(())) => {}
                Some(Err(error)) if error.is_power_loss() => return Pass::Retry,
                // Refused (Update Result says why), cancelled or replaced.
                _ => return Pass::Done,
            }
            self.report();
            if !block.more {
                return match self.with(|fw| fw.finish_pulled(generation)) {
                    // The device restarted and lost what it held in RAM: fetch it again.
                    Some(Err(error)) if error.is_power_loss() => Pass::Retry,
                    _ => Pass::Done,
                };
            }
            szx = block.szx;
            let size = 16u64 << szx;
            let next = (offset + response.payload.len() as u64)
                .max(self.with(|fw| fw.pull_resume_offset()).unwrap_or(0));
            num = u32::try_from(next / size).unwrap_or(u32::MAX);
        }
    }
}
