//! Operator accounts: users, web sessions, API tokens, the one-time setup token and the
//! append-only audit log, for the web console and its REST API.
//!
//! The trait [`AccountStore`] has the same shape as the traits in [`crate::store`] (boxed
//! `Send` futures, object safe). Every operation that reads and then changes a record (a
//! failed login, a TOTP step, a recovery code, the setup token) runs in one transaction, so two
//! concurrent requests cannot both use the same code or both escape a lockout.
//!
//! What is kept, and how:
//! - users: the Argon2id PHC string of the password (never the password), the TOTP secret
//!   sealed under the master key, the last TOTP time step accepted (a code is never accepted
//!   twice), SHA-256 digests of unused recovery codes, failed-login count and lockout;
//! - sessions and API tokens: keyed by the SHA-256 of the token, never the token itself, so a
//!   copy of the database does not hand out live credentials;
//! - the audit log: entries with increasing sequence numbers; the trait can append and list,
//!   nothing else.
//!
//! Tables (in the embedded store's file): `account_users`, `account_sessions`,
//! `account_api_tokens`, `account_api_token_by_digest`, `account_audit`, `account_meta`.

use std::ops::Bound;

use minicbor::{Decode, Encode};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, TableError};

use crate::embedded::EmbeddedStore;
use crate::error::{DecodeError, StoreError};
use crate::secret::SecretBytes;
use crate::store::StoreFuture;

/// A SHA-256 digest of a high-entropy token (session id, API token, setup token, recovery code).
pub type TokenDigest = [u8; 32];

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads devices, registrations, security summaries and the audit log.
    Viewer,
    /// A viewer who also runs device-management operations.
    Operator,
    /// An operator who also manages users, API tokens and device security.
    Admin,
}

impl Role {
    /// The role's name in the API (`viewer`, `operator`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            Role::Viewer => 0,
            Role::Operator => 1,
            Role::Admin => 2,
        }
    }

    fn from_code(code: u8) -> Option<Role> {
        match code {
            0 => Some(Role::Viewer),
            1 => Some(Role::Operator),
            2 => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An operator account.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The login name.
    pub username: String,
    /// What the user may do.
    pub role: Role,
    /// The password's Argon2id hash, as a PHC string.
    pub password_hash: String,
    /// The TOTP secret once enrolment is confirmed.
    pub totp_secret: Option<SecretBytes>,
    /// The last TOTP time step accepted (0: none yet).
    pub totp_last_step: u64,
    /// SHA-256 digests of the recovery codes not used yet.
    pub recovery_codes: Vec<TokenDigest>,
    /// Failed logins since the last success.
    pub failed_logins: u32,
    /// Logins are refused until this time (Unix milliseconds).
    pub locked_until_ms: u64,
    /// When the account was created (Unix milliseconds).
    pub created_at_ms: u64,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("role", &self.role)
            .field("totp_enrolled", &self.totp_secret.is_some())
            .field("recovery_codes", &self.recovery_codes.len())
            .field("failed_logins", &self.failed_logins)
            .field("locked_until_ms", &self.locked_until_ms)
            .finish_non_exhaustive()
    }
}

/// How far a web session has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStage {
    /// The password was right; the second factor is still due.
    AwaitingSecondFactor,
    /// Fully signed in.
    Authenticated,
}

/// A web session, stored under the digest of its id.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// The user.
    pub username: String,
    /// How far the login has come.
    pub stage: SessionStage,
    /// The synchronizer token state-changing requests must carry.
    pub csrf_token: String,
    /// When the session was created (Unix milliseconds).
    pub created_at_ms: u64,
    /// When the session was last used (Unix milliseconds).
    pub last_seen_ms: u64,
    /// A TOTP secret being enrolled, not yet confirmed.
    pub pending_totp_secret: Option<SecretBytes>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("username", &self.username)
            .field("stage", &self.stage)
            .field("created_at_ms", &self.created_at_ms)
            .field("last_seen_ms", &self.last_seen_ms)
            .finish_non_exhaustive()
    }
}

/// An API token's record (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// A public id to list and revoke the token by.
    pub id: String,
    /// A name the owner gave it.
    pub name: String,
    /// The user who created it.
    pub owner: String,
    /// Its role (at most the owner's role when it was created).
    pub role: Role,
    /// When it was created (Unix milliseconds).
    pub created_at_ms: u64,
    /// When it stops working (Unix milliseconds).
    pub expires_at_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its position in the log (assigned on append, increasing).
    pub seq: u64,
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// Who: a username, `token:<id>`, or `-` before authentication.
    pub actor: String,
    /// What: a stable action name (`login`, `device.write`, `user.create`, ...).
    pub action: String,
    /// On what (an endpoint and path, a username, a token id).
    pub target: String,
    /// From where (the client's address).
    pub source: String,
    /// `ok`, or why it failed.
    pub outcome: String,
}

/// How failed logins lock an account: after `free_attempts` failures, each further failure
/// locks it for `base_ms` doubled per failure, at most `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures allowed before the first lock.
    pub free_attempts: u32,
    /// The first lock's length (milliseconds).
    pub base_ms: u64,
    /// The longest lock (milliseconds).
    pub max_ms: u64,
}

impl LockoutPolicy {
    /// How long an account is locked after its `failures`-th consecutive failure.
    pub fn lock_ms(&self, failures: u32) -> u64 {
        if failures < self.free_attempts {
            return 0;
        }
        let doublings = (failures - self.free_attempts).min(40);
        self.base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_ms)
    }
}

/// What consuming the setup token gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupOutcome {
    /// The token was valid; the user was created and the token is gone.
    Created,
    /// No setup token matches (never issued, already used, or replaced).
    Invalid,
    /// The token matches but expired (it is removed).
    Expired,
    /// A user with this name exists already.
    UserExists,
}

/// Users, sessions, API tokens, the setup token and the audit log.
pub trait AccountStore: Send + Sync {
    /// Creates a user; [`StoreError::Conflict`] if the name is taken.
    fn create_user(&self, user: User) -> StoreFuture<'_, ()>;

    /// Replaces a stored user; [`StoreError::NotFound`] if there is none.
    fn update_user(&self, user: User) -> StoreFuture<'_, ()>;

    /// A user by name.
    fn get_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<User>>;

    /// Every user, by name.
    fn list_users(&self) -> StoreFuture<'_, Vec<User>>;

    /// Removes a user with their sessions; whether they existed.
    fn remove_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, bool>;

    /// The number of users.
    fn count_users(&self) -> StoreFuture<'_, u64>;

    /// Counts a failed login and locks the account per `policy`; the updated user, `None` if
    /// there is no such user.
    fn record_login_failure<'a>(
        &'a self,
        username: &'a str,
        now_ms: u64,
        policy: LockoutPolicy,
    ) -> StoreFuture<'a, Option<User>>;

    /// Clears the failed-login count after a successful login.
    fn clear_login_failures<'a>(&'a self, username: &'a str) -> StoreFuture<'a, ()>;

    /// Accepts TOTP time step `step` if it is later than the last one accepted, and records it;
    /// `false` (a replay, or no such user) otherwise.
    fn use_totp_step<'a>(&'a self, username: &'a str, step: u64) -> StoreFuture<'a, bool>;

    /// Removes a recovery code if the user has it; whether they had it.
    fn use_recovery_code<'a>(
        &'a self,
        username: &'a str,
        digest: TokenDigest,
    ) -> StoreFuture<'a, bool>;

    /// Stores a session under the digest of its id, replacing `replaces` (the session being
    /// rotated) in the same transaction.
    fn put_session(
        &self,
        digest: TokenDigest,
        session: Session,
        replaces: Option<TokenDigest>,
    ) -> StoreFuture<'_, ()>;

    /// The session with this id digest.
    fn get_session(&self, digest: TokenDigest) -> StoreFuture<'_, Option<Session>>;

    /// Removes a session; whether it existed.
    fn remove_session(&self, digest: TokenDigest) -> StoreFuture<'_, bool>;

    /// Removes every session of a user; how many.
    fn remove_sessions_of<'a>(&'a self, username: &'a str) -> StoreFuture<'a, usize>;

    /// Removes sessions last seen before `idle_before_ms` or created before
    /// `created_before_ms`; how many.
    fn remove_expired_sessions(
        &self,
        idle_before_ms: u64,
        created_before_ms: u64,
    ) -> StoreFuture<'_, usize>;

    /// Stores a new API token under the digest of its secret.
    fn put_api_token(&self, digest: TokenDigest, token: ApiToken) -> StoreFuture<'_, ()>;

    /// The API token whose secret has this digest.
    fn get_api_token_by_digest(&self, digest: TokenDigest) -> StoreFuture<'_, Option<ApiToken>>;

    /// Every API token (revoked and expired ones included), by id.
    fn list_api_tokens(&self) -> StoreFuture<'_, Vec<ApiToken>>;

    /// Marks a token revoked; the token as it is now, `None` if there is no such token.
    fn revoke_api_token<'a>(
        &'a self,
        id: &'a str,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<ApiToken>>;

    /// Replaces the one-time setup token (only its digest is kept).
    fn put_setup_token(&self, digest: TokenDigest, expires_at_ms: u64) -> StoreFuture<'_, ()>;

    /// Whether a setup token with this digest exists and has not expired.
    fn check_setup_token(&self, digest: TokenDigest, now_ms: u64) -> StoreFuture<'_, bool>;

    /// Consumes the setup token and creates `user`, in one transaction.
    fn consume_setup_token(
        &self,
        digest: TokenDigest,
        now_ms: u64,
        user: User,
    ) -> StoreFuture<'_, SetupOutcome>;

    /// Appends to the audit log; the entry's `seq` is ignored and the assigned one returned.
    fn append_audit(&self, entry: AuditEntry) -> StoreFuture<'_, u64>;

    /// Audit entries newest first, starting before `before` (a `seq`).
    fn list_audit(&self, before: Option<u64>, limit: usize) -> StoreFuture<'_, Vec<AuditEntry>>;
}

// ---- the embedded implementation --------------------------------------------------------------

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("account_users");
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("account_sessions");
const API_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("account_api_tokens");
const API_TOKEN_BY_DIGEST: TableDefinition<&[u8], &str> =
    TableDefinition::new("account_api_token_by_digest");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("account_audit");
const ACCOUNT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("account_meta");

const SETUP_TOKEN: &str = "setup_token";
const FORMAT_VERSION: u8 = 1;

#[derive(Encode, Decode)]
struct WireUser {
    #[n(0)]
    username: String,
    #[n(1)]
    role: u8,
    #[n(2)]
    password_hash: String,
    #[cbor(n(3), with = "minicbor::bytes")]
    sealed_totp_secret: Option<Vec<u8>>,
    #[n(4)]
    totp_last_step: u64,
    #[n(5)]
    recovery_codes: Vec<minicbor::bytes::ByteArray<32>>,
    #[n(6)]
    failed_logins: u32,
    #[n(7)]
    locked_until_ms: u64,
    #[n(8)]
    created_at_ms: u64,
}

#[derive(Encode, Decode)]
struct WireSession {
    #[n(0)]
    username: String,
    #[n(1)]
    authenticated: bool,
    #[n(2)]
    csrf_token: String,
    #[n(3)]
    created_at_ms: u64,
    #[n(4)]
    last_seen_ms: u64,
    #[cbor(n(5), with = "minicbor::bytes")]
    sealed_pending_totp: Option<Vec<u8>>,
}

#[derive(Encode, Decode)]
struct WireApiToken {
    #[n(0)]
    id: String,
    #[n(1)]
    name: String,
    #[n(2)]
    owner: String,
    #[n(3)]
    role: u8,
    #[n(4)]
    created_at_ms: u64,
    #[n(5)]
    expires_at_ms: u64,
    #[n(6)]
    revoked_at_ms: Option<u64>,
}

#[derive(Encode, Decode)]
struct WireAudit {
    #[n(0)]
    at_ms: u64,
    #[n(1)]
    actor: String,
    #[n(2)]
    action: String,
    #[n(3)]
    target: String,
    #[n(4)]
    source: String,
    #[n(5)]
    outcome: String,
}

#[derive(Encode, Decode)]
struct WireSetupToken {
    #[cbor(n(0), with = "minicbor::bytes")]
    digest: Vec<u8>,
    #[n(1)]
    expires_at_ms: u64,
}

fn encode<T: Encode<()>>(wire: &T) -> Vec<u8> {
    let mut bytes = vec![FORMAT_VERSION];
    // Writing CBOR into a Vec cannot fail.
    let _ = minicbor::encode(wire, &mut bytes);
    bytes
}

fn decode<'b, T: Decode<'b, ()>>(kind: &'static str, bytes: &'b [u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty { kind })?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            kind,
            version,
            supported: FORMAT_VERSION,
        });
    }
    minicbor::decode(body).map_err(|e| DecodeError::Malformed {
        kind,
        reason: e.to_string(),
    })
}

fn totp_context(username: &str) -> Vec<u8> {
    let mut context = b"cairn-store/accounts/totp\0".to_vec();
    context.extend_from_slice(username.as_bytes());
    context
}

fn pending_totp_context(username: &str, created_at_ms: u64) -> Vec<u8> {
    let mut context = format!("cairn-store/accounts/pending-totp\0{created_at_ms}\0").into_bytes();
    context.extend_from_slice(username.as_bytes());
    context
}

impl EmbeddedStore {
    fn encode_user(&self, user: &User) -> Result<Vec<u8>, StoreError> {
        let sealed_totp_secret = match &user.totp_secret {
            Some(secret) => Some(
                self.master_key()
                    .seal(secret.expose(), &totp_context(&user.username))?,
            ),
            None => None,
        };
        Ok(encode(&WireUser {
            username: user.username.clone(),
            role: user.role.code(),
            password_hash: user.password_hash.clone(),
            sealed_totp_secret,
            totp_last_step: user.totp_last_step,
            recovery_codes: user
                .recovery_codes
                .iter()
                .map(|d| minicbor::bytes::ByteArray::from(*d))
                .collect(),
            failed_logins: user.failed_logins,
            locked_until_ms: user.locked_until_ms,
            created_at_ms: user.created_at_ms,
        }))
    }

    fn decode_user(&self, bytes: &[u8]) -> Result<User, StoreError> {
        const KIND: &str = "user";
        let wire: WireUser = decode(KIND, bytes)?;
        let role = Role::from_code(wire.role).ok_or(DecodeError::InvalidField {
            kind: KIND,
            field: "role",
        })?;
        let totp_secret = match wire.sealed_totp_secret {
            Some(sealed) => Some(
                self.master_key()
                    .open(&sealed, &totp_context(&wire.username))
                    .ok_or_else(|| StoreError::SecretTampered {
                        record: format!("account_users/{}", wire.username),
                    })?,
            ),
            None => None,
        };
        Ok(User {
            username: wire.username,
            role,
            password_hash: wire.password_hash,
            totp_secret,
            totp_last_step: wire.totp_last_step,
            recovery_codes: wire.recovery_codes.into_iter().map(|d| *d).collect(),
            failed_logins: wire.failed_logins,
            locked_until_ms: wire.locked_until_ms,
            created_at_ms: wire.created_at_ms,
        })
    }

    fn encode_session(&self, session: &Session) -> Result<Vec<u8>, StoreError> {
        let sealed_pending_totp = match &session.pending_totp_secret {
            Some(secret) => Some(self.master_key().seal(
                secret.expose(),
                &pending_totp_context(&session.username, session.created_at_ms),
            )?),
            None => None,
        };
        Ok(encode(&WireSession {
            username: session.username.clone(),
            authenticated: session.stage == SessionStage::Authenticated,
            csrf_token: session.csrf_token.clone(),
            created_at_ms: session.created_at_ms,
            last_seen_ms: session.last_seen_ms,
            sealed_pending_totp,
        }))
    }

    fn decode_session(&self, bytes: &[u8]) -> Result<Session, StoreError> {
        let wire: WireSession = decode("session", bytes)?;
        let pending_totp_secret = match wire.sealed_pending_totp {
            Some(sealed) => Some(
                self.master_key()
                    .open(
                        &sealed,
                        &pending_totp_context(&wire.username, wire.created_at_ms),
                    )
                    .ok_or_else(|| StoreError::SecretTampered {
                        record: "account_sessions".into(),
                    })?,
            ),
            None => None,
        };
        Ok(Session {
            username: wire.username,
            stage: if wire.authenticated {
                SessionStage::Authenticated
            } else {
                SessionStage::AwaitingSecondFactor
            },
            csrf_token: wire.csrf_token,
            created_at_ms: wire.created_at_ms,
            last_seen_ms: wire.last_seen_ms,
            pending_totp_secret,
        })
    }

    /// Runs a read-write transaction on the blocking pool.
    fn account_write<T, F>(&self, operation: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&EmbeddedStore, &redb::WriteTransaction) -> Result<T, StoreError>
            + Send
            + 'static,
    {
        let store = self.clone();
        Box::pin(async move {
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|e| StoreError::Task(e.to_string()))?;
            runtime
                .spawn_blocking(move || {
                    let mut txn = store.database().begin_write()?;
                    txn.set_durability(redb::Durability::Immediate);
                    let result = operation(&store, &txn)?;
                    txn.commit()?;
                    Ok(result)
                })
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        })
    }

    /// Runs a read transaction inline (an MVCC snapshot; it does not wait for writers).
    fn account_read<T, F>(&self, operation: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&EmbeddedStore, &redb::ReadTransaction) -> Result<T, StoreError>,
    {
        let result = self
            .database()
            .begin_read()
            .map_err(StoreError::from)
            .and_then(|txn| operation(self, &txn));
        Box::pin(std::future::ready(result))
    }
}

/// Opens a table for reading; a table that was never written reads as `None`.
fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn modify_user<T>(
    store: &EmbeddedStore,
    txn: &redb::WriteTransaction,
    username: &str,
    change: impl FnOnce(&mut User) -> T,
) -> Result<Option<(User, T)>, StoreError> {
    let mut users = txn.open_table(USERS)?;
    let existing = users.get(username)?.map(|v| v.value().to_vec());
    let Some(bytes) = existing else {
        return Ok(None);
    };
    let mut user = store.decode_user(&bytes)?;
    let result = change(&mut user);
    users.insert(username, store.encode_user(&user)?.as_slice())?;
    Ok(Some((user, result)))
}

fn api_token_to_wire(token: &ApiToken) -> WireApiToken {
    WireApiToken {
        id: token.id.clone(),
        name: token.name.clone(),
        owner: token.owner.clone(),
        role: token.role.code(),
        created_at_ms: token.created_at_ms,
        expires_at_ms: token.expires_at_ms,
        revoked_at_ms: token.revoked_at_ms,
    }
}

fn decode_api_token(bytes: &[u8]) -> Result<ApiToken, StoreError> {
    const KIND: &str = "API token";
    let wire: WireApiToken = decode(KIND, bytes)?;
    Ok(ApiToken {
        id: wire.id,
        name: wire.name,
        owner: wire.owner,
        role: Role::from_code(wire.role).ok_or(DecodeError::InvalidField {
            kind: KIND,
            field: "role",
        })?,
        created_at_ms: wire.created_at_ms,
        expires_at_ms: wire.expires_at_ms,
        revoked_at_ms: wire.revoked_at_ms,
    })
}

fn decode_audit(seq: u64, bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    let wire: WireAudit = decode("audit entry", bytes)?;
    Ok(AuditEntry {
        seq,
        at_ms: wire.at_ms,
        actor: wire.actor,
        action: wire.action,
        target: wire.target,
        source: wire.source,
        outcome: wire.outcome,
    })
}

fn setup_token_matches(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    digest: &TokenDigest,
) -> Result<Option<u64>, StoreError> {
    use subtle::ConstantTimeEq;
    let Some(value) = meta.get(SETUP_TOKEN)? else {
        return Ok(None);
    };
    let wire: WireSetupToken = decode("setup token", value.value())?;
    if wire.digest.len() == 32 && bool::from(wire.digest.ct_eq(digest)) {
        Ok(Some(wire.expires_at_ms))
    } else {
        Ok(None)
    }
}

impl AccountStore for EmbeddedStore {
    fn create_user(&self, user: User) -> StoreFuture<'_, ()> {
        self.account_write(move |store, txn| {
            let mut users = txn.open_table(USERS)?;
            if users.get(user.username.as_str())?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "user {:?} exists",
                    user.username
                )));
            }
            users.insert(user.username.as_str(), store.encode_user(&user)?.as_slice())?;
            Ok(())
        })
    }

    fn update_user(&self, user: User) -> StoreFuture<'_, ()> {
        self.account_write(move |store, txn| {
            let mut users = txn.open_table(USERS)?;
            if users.get(user.username.as_str())?.is_none() {
                return Err(StoreError::NotFound(format!("user {:?}", user.username)));
            }
            users.insert(user.username.as_str(), store.encode_user(&user)?.as_slice())?;
            Ok(())
        })
    }

    fn get_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<User>> {
        self.account_read(|store, txn| {
            let Some(users) = open_read(txn, USERS)? else {
                return Ok(None);
            };
            users
                .get(username)?
                .map(|v| store.decode_user(v.value()))
                .transpose()
        })
    }

    fn list_users(&self) -> StoreFuture<'_, Vec<User>> {
        self.account_read(|store, txn| {
            let Some(users) = open_read(txn, USERS)? else {
                return Ok(Vec::new());
            };
            users
                .iter()?
                .map(|entry| store.decode_user(entry?.1.value()))
                .collect()
        })
    }

    fn remove_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, bool> {
        let username = username.to_owned();
        self.account_write(move |store, txn| {
            let existed = txn.open_table(USERS)?.remove(username.as_str())?.is_some();
            remove_sessions_where(store, txn, |s| s.username == username)?;
            Ok(existed)
        })
    }

    fn count_users(&self) -> StoreFuture<'_, u64> {
        self.account_read(|_, txn| match open_read(txn, USERS)? {
            Some(users) => Ok(users.len()?),
            None => Ok(0),
        })
    }

    fn record_login_failure<'a>(
        &'a self,
        username: &'a str,
        now_ms: u64,
        policy: LockoutPolicy,
    ) -> StoreFuture<'a, Option<User>> {
        let username = username.to_owned();
        self.account_write(move |store, txn| {
            Ok(modify_user(store, txn, &username, |user| {
                user.failed_logins = user.failed_logins.saturating_add(1);
                let lock = policy.lock_ms(user.failed_logins);
                if lock > 0 {
                    user.locked_until_ms = user.locked_until_ms.max(now_ms.saturating_add(lock));
                }
            })?
            .map(|(user, ())| user))
        })
    }

    fn clear_login_failures<'a>(&'a self, username: &'a str) -> StoreFuture<'a, ()> {
        let username = username.to_owned();
        self.account_write(move |store, txn| {
            modify_user(store, txn, &username, |user| {
                user.failed_logins = 0;
                user.locked_until_ms = 0;
            })?;
            Ok(())
        })
    }

    fn use_totp_step<'a>(&'a self, username: &'a str, step: u64) -> StoreFuture<'a, bool> {
        let username = username.to_owned();
        self.account_write(move |store, txn| {
            Ok(modify_user(store, txn, &username, |user| {
                if step > user.totp_last_step {
                    user.totp_last_step = step;
                    true
                } else {
                    false
                }
            })?
            .is_some_and(|(_, accepted)| accepted))
        })
    }

    fn use_recovery_code<'a>(
        &'a self,
        username: &'a str,
        digest: TokenDigest,
    ) -> StoreFuture<'a, bool> {
        use subtle::ConstantTimeEq;
        let username = username.to_owned();
        self.account_write(move |store, txn| {
            Ok(modify_user(store, txn, &username, |user| {
                let position = user
                    .recovery_codes
                    .iter()
                    .position(|code| bool::from(code.ct_eq(&digest)));
                match position {
                    Some(index) => {
                        user.recovery_codes.remove(index);
                        true
                    }
                    None => false,
                }
            })?
            .is_some_and(|(_, used)| used))
        })
    }

    fn put_session(
        &self,
        digest: TokenDigest,
        session: Session,
        replaces: Option<TokenDigest>,
    ) -> StoreFuture<'_, ()> {
        self.account_write(move |store, txn| {
            let mut sessions = txn.open_table(SESSIONS)?;
            if let Some(old) = replaces {
                sessions.remove(old.as_slice())?;
            }
            sessions.insert(
                digest.as_slice(),
                store.encode_session(&session)?.as_slice(),
            )?;
            Ok(())
        })
    }

    fn get_session(&self, digest: TokenDigest) -> StoreFuture<'_, Option<Session>> {
        self.account_read(move |store, txn| {
            let Some(sessions) = open_read(txn, SESSIONS)? else {
                return Ok(None);
            };
            sessions
                .get(digest.as_slice())?
                .map(|v| store.decode_session(v.value()))
                .transpose()
        })
    }

    fn remove_session(&self, digest: TokenDigest) -> StoreFuture<'_, bool> {
        self.account_write(move |_, txn| {
            Ok(txn
                .open_table(SESSIONS)?
                .remove(digest.as_slice())?
                .is_some())
        })
    }

    fn remove_sessions_of<'a>(&'a self, username: &'a str) -> StoreFuture<'a, usize> {
        let username = username.to_owned();
        self.account_write(move |store, txn| {
            remove_sessions_where(store, txn, |s| s.username == username)
        })
    }

    fn remove_expired_sessions(
        &self,
        idle_before_ms: u64,
        created_before_ms: u64,
    ) -> StoreFuture<'_, usize> {
        self.account_write(move |store, txn| {
            remove_sessions_where(store, txn, |s| {
                s.last_seen_ms < idle_before_ms || s.created_at_ms < created_before_ms
            })
        })
    }

    fn put_api_token(&self, digest: TokenDigest, token: ApiToken) -> StoreFuture<'_, ()> {
        self.account_write(move |_, txn| {
            let mut tokens = txn.open_table(API_TOKENS)?;
            if tokens.get(token.id.as_str())?.is_some() {
                return Err(StoreError::Conflict(format!("API token {}", token.id)));
            }
            tokens.insert(
                token.id.as_str(),
                encode(&api_token_to_wire(&token)).as_slice(),
            )?;
            txn.open_table(API_TOKEN_BY_DIGEST)?
                .insert(digest.as_slice(), token.id.as_str())?;
            Ok(())
        })
    }

    fn get_api_token_by_digest(&self, digest: TokenDigest) -> StoreFuture<'_, Option<ApiToken>> {
        self.account_read(move |_, txn| {
            let Some(index) = open_read(txn, API_TOKEN_BY_DIGEST)? else {
                return Ok(None);
            };
            let Some(id) = index.get(digest.as_slice())?.map(|v| v.value().to_owned()) else {
                return Ok(None);
            };
            let Some(tokens) = open_read(txn, API_TOKENS)? else {
                return Ok(None);
            };
            tokens
                .get(id.as_str())?
                .map(|v| decode_api_token(v.value()))
                .transpose()
        })
    }

    fn list_api_tokens(&self) -> StoreFuture<'_, Vec<ApiToken>> {
        self.account_read(|_, txn| {
            let Some(tokens) = open_read(txn, API_TOKENS)? else {
                return Ok(Vec::new());
            };
            tokens
                .iter()?
                .map(|entry| decode_api_token(entry?.1.value()))
                .collect()
        })
    }

    fn revoke_api_token<'a>(
        &'a self,
        id: &'a str,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<ApiToken>> {
        let id = id.to_owned();
        self.account_write(move |_, txn| {
            let mut tokens = txn.open_table(API_TOKENS)?;
            let existing = tokens.get(id.as_str())?.map(|v| v.value().to_vec());
            let Some(bytes) = existing else {
                return Ok(None);
            };
            let mut token = decode_api_token(&bytes)?;
            token.revoked_at_ms.get_or_insert(now_ms);
            tokens.insert(id.as_str(), encode(&api_token_to_wire(&token)).as_slice())?;
            Ok(Some(token))
        })
    }

    fn put_setup_token(&self, digest: TokenDigest, expires_at_ms: u64) -> StoreFuture<'_, ()> {
        self.account_write(move |_, txn| {
            let wire = WireSetupToken {
                digest: digest.to_vec(),
                expires_at_ms,
            };
            txn.open_table(ACCOUNT_META)?
                .insert(SETUP_TOKEN, encode(&wire).as_slice())?;
            Ok(())
        })
    }

    fn check_setup_token(&self, digest: TokenDigest, now_ms: u64) -> StoreFuture<'_, bool> {
        self.account_read(move |_, txn| {
            let Some(meta) = open_read(txn, ACCOUNT_META)? else {
                return Ok(false);
            };
            Ok(setup_token_matches(&meta, &digest)?.is_some_and(|expires| now_ms < expires))
        })
    }

    fn consume_setup_token(
        &self,
        digest: TokenDigest,
        now_ms: u64,
        user: User,
    ) -> StoreFuture<'_, SetupOutcome> {
        self.account_write(move |store, txn| {
            let mut meta = txn.open_table(ACCOUNT_META)?;
            let Some(expires_at_ms) = setup_token_matches(&meta, &digest)? else {
                return Ok(SetupOutcome::Invalid);
            };
            meta.remove(SETUP_TOKEN)?;
            if now_ms >= expires_at_ms {
                return Ok(SetupOutcome::Expired);
            }
            let mut users = txn.open_table(USERS)?;
            if users.get(user.username.as_str())?.is_some() {
                return Ok(SetupOutcome::UserExists);
            }
            users.insert(user.username.as_str(), store.encode_user(&user)?.as_slice())?;
            Ok(SetupOutcome::Created)
        })
    }

    fn append_audit(&self, entry: AuditEntry) -> StoreFuture<'_, u64> {
        self.account_write(move |_, txn| {
            let mut audit = txn.open_table(AUDIT)?;
            let seq = audit.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            let wire = WireAudit {
                at_ms: entry.at_ms,
                actor: entry.actor,
                action: entry.action,
                target: entry.target,
                source: entry.source,
                outcome: entry.outcome,
            };
            audit.insert(seq, encode(&wire).as_slice())?;
            Ok(seq)
        })
    }

    fn list_audit(&self, before: Option<u64>, limit: usize) -> StoreFuture<'_, Vec<AuditEntry>> {
        self.account_read(move |_, txn| {
            let Some(audit) = open_read(txn, AUDIT)? else {
                return Ok(Vec::new());
            };
            let upper = match before {
                Some(before) => Bound::Excluded(before),
                None => Bound::Unbounded,
            };
            audit
                .range::<u64>((Bound::Unbounded, upper))?
                .rev()
                .take(limit)
                .map(|entry| {
                    let (key, value) = entry?;
                    decode_audit(key.value(), value.value())
                })
                .collect()
        })
    }
}

fn remove_sessions_where(
    store: &EmbeddedStore,
    txn: &redb::WriteTransaction,
    mut condition: impl FnMut(&Session) -> bool,
) -> Result<usize, StoreError> {
    let mut sessions = txn.open_table(SESSIONS)?;
    let mut doomed = Vec::new();
    for entry in sessions.iter()? {
        let (key, value) = entry?;
        // A session that no longer decodes is of no use to anyone: remove it too.
        let remove = match store.decode_session(value.value()) {
            Ok(session) => condition(&session),
            Err(_) => true,
        };
        if remove {
            doomed.push(key.value().to_vec());
        }
    }
    for key in &doomed {
        sessions.remove(key.as_slice())?;
    }
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{MasterKey, MasterKeySource};

    fn store(dir: &std::path::Path) -> EmbeddedStore {
        let key = MasterKey::from_bytes(&[7; 32]);
        EmbeddedStore::open_with(dir, MasterKeySource::Key(key)).unwrap()
    }

    fn user(name: &str) -> User {
        User {
            username: name.into(),
            role: Role::Admin,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            totp_secret: Some(SecretBytes::new(vec![9; 20])),
            totp_last_step: 0,
            recovery_codes: vec![[1; 32], [2; 32]],
            failed_logins: 0,
            locked_until_ms: 0,
            created_at_ms: 1,
        }
    }

    fn session(name: &str, created: u64, seen: u64) -> Session {
        Session {
            username: name.into(),
            stage: SessionStage::Authenticated,
            csrf_token: "csrf".into(),
            created_at_ms: created,
            last_seen_ms: seen,
            pending_totp_secret: Some(SecretBytes::new(vec![3; 20])),
        }
    }

    #[tokio::test]
    async fn a_fresh_store_has_no_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        assert_eq!(store.count_users().await.unwrap(), 0);
        assert!(store.get_user("a").await.unwrap().is_none());
        assert!(store.get_session([0; 32]).await.unwrap().is_none());
        assert!(store.list_audit(None, 10).await.unwrap().is_empty());
        assert!(store.list_api_tokens().await.unwrap().is_empty());
        assert!(!store.check_setup_token([0; 32], 0).await.unwrap());
    }

    #[tokio::test]
    async fn users_round_trip_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.create_user(user("alice")).await.unwrap();
        assert!(matches!(
            store.create_user(user("alice")).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.get_user("alice").await.unwrap(), Some(user("alice")));
        assert_eq!(store.count_users().await.unwrap(), 1);
        assert!(matches!(
            store.update_user(user("bob")).await,
            Err(StoreError::NotFound(_))
        ));
        store
            .put_session([5; 32], session("alice", 1, 1), None)
            .await
            .unwrap();
        assert!(store.remove_user("alice").await.unwrap());
        assert!(store.get_session([5; 32]).await.unwrap().is_none());
        assert!(!store.remove_user("alice").await.unwrap());
    }

    #[tokio::test]
    async fn the_totp_secret_is_sealed_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.create_user(user("alice")).await.unwrap();
        let raw = store
            .database()
            .begin_read()
            .unwrap()
            .open_table(USERS)
            .unwrap()
            .get("alice")
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        assert!(!raw.windows(20).any(|w| w == [9; 20]));
    }

    #[tokio::test]
    async fn a_totp_step_is_accepted_once_and_never_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.create_user(user("alice")).await.unwrap();
        assert!(store.use_totp_step("alice", 100).await.unwrap());
        assert!(!store.use_totp_step("alice", 100).await.unwrap());
        assert!(!store.use_totp_step("alice", 99).await.unwrap());
        assert!(store.use_totp_step("alice", 101).await.unwrap());
        assert!(!store.use_totp_step("nobody", 500).await.unwrap());
    }

    #[tokio::test]
    async fn a_recovery_code_works_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.create_user(user("alice")).await.unwrap();
        assert!(store.use_recovery_code("alice", [1; 32]).await.unwrap());
        assert!(!store.use_recovery_code("alice", [1; 32]).await.unwrap());
        assert!(!store.use_recovery_code("alice", [3; 32]).await.unwrap());
        assert_eq!(
            store
                .get_user("alice")
                .await
                .unwrap()
                .unwrap()
                .recovery_codes,
            vec![[2; 32]]
        );
    }

    #[tokio::test]
    async fn failures_lock_with_backoff_and_success_clears() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.create_user(user("alice")).await.unwrap();
        let policy = LockoutPolicy {
            free_attempts: 3,
            base_ms: 1000,
            max_ms: 8000,
        };
        for _ in 0..2 {
            let u = store
                .record_login_failure("alice", 0, policy)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(u.locked_until_ms, 0);
        }
        let u = store
            .record_login_failure("alice", 0, policy)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u.locked_until_ms, 1000);
        let u = store
            .record_login_failure("alice", 0, policy)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u.locked_until_ms, 2000);
        assert_eq!(policy.lock_ms(100), 8000);
        store.clear_login_failures("alice").await.unwrap();
        let u = store.get_user("alice").await.unwrap().unwrap();
        assert_eq!((u.failed_logins, u.locked_until_ms), (0, 0));
    }

    #[tokio::test]
    async fn sessions_rotate_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store
            .put_session([1; 32], session("a", 0, 0), None)
            .await
            .unwrap();
        store
            .put_session([2; 32], session("a", 0, 50), Some([1; 32]))
            .await
            .unwrap();
        assert!(store.get_session([1; 32]).await.unwrap().is_none());
        assert_eq!(
            store.get_session([2; 32]).await.unwrap(),
            Some(session("a", 0, 50))
        );
        store
            .put_session([3; 32], session("b", 100, 100), None)
            .await
            .unwrap();
        assert_eq!(store.remove_expired_sessions(60, 0).await.unwrap(), 1);
        assert!(store.get_session([3; 32]).await.unwrap().is_some());
        assert_eq!(store.remove_expired_sessions(0, 101).await.unwrap(), 1);
        assert!(store.get_session([3; 32]).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn api_tokens_are_found_by_digest_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let token = ApiToken {
            id: "t1".into(),
            name: "ci".into(),
            owner: "alice".into(),
            role: Role::Operator,
            created_at_ms: 1,
            expires_at_ms: 100,
            revoked_at_ms: None,
        };
        store.put_api_token([4; 32], token.clone()).await.unwrap();
        assert!(matches!(
            store.put_api_token([5; 32], token.clone()).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            store.get_api_token_by_digest([4; 32]).await.unwrap(),
            Some(token.clone())
        );
        assert!(
            store
                .get_api_token_by_digest([5; 32])
                .await
                .unwrap()
                .is_none()
        );
        let revoked = store.revoke_api_token("t1", 50).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at_ms, Some(50));
        assert_eq!(store.list_api_tokens().await.unwrap(), vec![revoked]);
        assert!(store.revoke_api_token("nope", 50).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_setup_token_works_once_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.put_setup_token([8; 32], 1000).await.unwrap();
        assert!(store.check_setup_token([8; 32], 999).await.unwrap());
        assert!(!store.check_setup_token([8; 32], 1000).await.unwrap());
        assert!(!store.check_setup_token([9; 32], 0).await.unwrap());
        assert_eq!(
            store
                .consume_setup_token([9; 32], 0, user("a"))
                .await
                .unwrap(),
            SetupOutcome::Invalid
        );
        assert_eq!(
            store
                .consume_setup_token([8; 32], 10, user("a"))
                .await
                .unwrap(),
            SetupOutcome::Created
        );
        assert_eq!(
            store
                .consume_setup_token([8; 32], 10, user("b"))
                .await
                .unwrap(),
            SetupOutcome::Invalid
        );
        store.put_setup_token([8; 32], 1000).await.unwrap();
        assert_eq!(
            store
                .consume_setup_token([8; 32], 1000, user("b"))
                .await
                .unwrap(),
            SetupOutcome::Expired
        );
        assert!(store.get_user("b").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_audit_log_appends_in_order_and_lists_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        for i in 0..5 {
            let entry = AuditEntry {
                seq: 0,
                at_ms: i,
                actor: "alice".into(),
                action: format!("action{i}"),
                target: "t".into(),
                source: "127.0.0.1".into(),
                outcome: "ok".into(),
            };
            assert_eq!(store.append_audit(entry).await.unwrap(), i + 1);
        }
        let newest = store.list_audit(None, 2).await.unwrap();
        assert_eq!(newest.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 4]);
        let older = store.list_audit(Some(4), 10).await.unwrap();
        assert_eq!(
            older.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        assert_eq!(older[0].action, "action2");
    }
}
