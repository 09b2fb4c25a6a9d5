//! The servers under test, each a child process on a free loopback port: started,
//! probed until they answer, watched while measured, and killed when dropped (on
//! success, on error and on interruption alike). What a server writes to stderr is kept
//! (its last lines) and shown only if it exits.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::message::{GetRequest, parse_header};

/// How long a server has to answer its first request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the startup probe is repeated.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How many of a server's last stderr lines are kept.
const STDERR_LINES_KEPT: usize = 20;

/// A running server process, killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    name: &'static str,
    child: Child,
    address: SocketAddr,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl ServerProcess {
    /// Starts `program args...`; the server is to listen on `address`.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[OsString],
        address: SocketAddr,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start the {name} server ({})", program.display()))?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_LINES_KEPT)));
        if let Some(stderr) = child.stderr.take() {
            let tail = Arc::clone(&stderr_tail);
            std::thread::Builder::new()
                .name(format!("{name}-stderr"))
                .spawn(move || keep_tail(stderr, &tail))?;
        }
        Ok(Self {
            name,
            child,
            address,
            stderr_tail,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => {
                // Give the reader a moment to collect the last words.
                std::thread::sleep(Duration::from_millis(50));
                let tail = self
                    .stderr_tail
                    .lock()
                    .map(|tail| Vec::from(tail.clone()))
                    .unwrap_or_default();
                let said = if tail.is_empty() {
                    String::new()
                } else {
                    format!(":\n  {}", tail.join("\n  "))
                };
                bail!("the {} server exited ({status}){said}", self.name)
            }
            None => Ok(()),
        }
    }

    /// Sends `request` (a GET) every [`PROBE_INTERVAL`] until the server answers it.
    pub fn wait_until_ready(
        &mut self,
        request: &GetRequest,
        stop: &AtomicBool,
    ) -> anyhow::Result<()> {
        let token = [0xfe, 0xed, 0xfa, 0xce];
        let probe = request.with_identity(0xfeed, token);
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        socket.connect(self.address)?;
        socket.set_read_timeout(Some(PROBE_INTERVAL))?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut buffer = [0u8; 2048];
        while Instant::now() < deadline {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            self.ensure_running()?;
            // Until the server listens, the probe is refused at once: wait, then retry.
            // Otherwise the read timeout is the wait.
            let answer = socket.send(&probe).and_then(|_| socket.recv(&mut buffer));
            match answer {
                Ok(len) if parse_header(&buffer[..len]).is_some_and(|h| h.token == token) => {
                    return Ok(());
                }
                Ok(_) => {}
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => std::thread::sleep(PROBE_INTERVAL),
            }
        }
        bail!(
            "the {} server did not answer a CoAP GET on {} within {} s",
            self.name,
            self.address,
            STARTUP_TIMEOUT.as_secs()
        )
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Already exited or already reaped: nothing left to do either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `stderr` to its end, keeping its last lines in `tail`.
fn keep_tail(stderr: impl std::io::Read, tail: &Mutex<VecDeque<String>>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { return };
        let Ok(mut tail) = tail.lock() else { return };
        if tail.len() == STDERR_LINES_KEPT {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_loopback_address() -> anyhow::Result<SocketAddr> {
    let socket =
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("no free UDP port on 127.0.0.1")?;
    Ok(socket.local_addr()?)
}

/// The full path of `program` found in `PATH`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|directory| directory.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_exits_is_reported_with_its_last_words() {
        let address = free_loopback_address().unwrap();
        let args: Vec<OsString> = vec!["-c".into(), "echo cannot bind >&2; exit 3".into()];
        let mut server =
            ServerProcess::spawn("test", Path::new("/bin/sh"), &args, address).unwrap();
        let error = server
            .wait_until_ready(&GetRequest::new("/"), &AtomicBool::new(false))
            .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("the test server exited"), "{message}");
        assert!(message.contains("cannot bind"), "{message}");
    }

    #[test]
    fn finds_programs_in_path() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-program-here").is_none());
    }
}
