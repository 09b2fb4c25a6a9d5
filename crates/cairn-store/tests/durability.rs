//! Every write that returned `Ok` survives the process being killed with `SIGKILL`.
//!
//! The parent test re-runs this test binary as a child (selected by an environment variable).
//! The child writes registrations one after another and reports each on stdout as soon as the
//! write returns; the parent kills it with `SIGKILL` after a few reports, reopens the database,
//! and finds every registration the child reported.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use cairn_store::RegistrationStore;
use common::{open, registration};

const CHILD_DIR_ENV: &str = "CAIRN_STORE_DURABILITY_CHILD_DIR";
const REPORT: &str = "written ";

#[tokio::test]
async fn durability_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let store = open(std::path::Path::new(&dir));
    for i in 0.. {
        let endpoint = format!("ep{i}");
        store
            .add_registration(registration(&endpoint, &format!("id{i}"), i))
            .await
            .unwrap();
        println!("{REPORT}{i}");
    }
}

#[test]
fn registrations_survive_sigkill_right_after_the_write_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["durability_child_writer", "--exact", "--nocapture"])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reported = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(index) = line.strip_prefix(REPORT) {
            reported.push(index.parse::<u64>().unwrap());
            if reported.len() == 20 {
                // `Child::kill` sends SIGKILL on Unix: no destructor, no flush, no commit.
                child.kill().unwrap();
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed");
    assert_eq!(reported.len(), 20, "the child reported its writes");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = open(dir.path());
    for i in reported {
        let found = runtime
            .block_on(store.get_registration(&format!("id{i}")))
            .unwrap();
        assert_eq!(
            found,
            Some(registration(&format!("ep{i}"), &format!("id{i}"), i))
        );
    }
}
