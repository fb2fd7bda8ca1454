//! The coordinator's durable state: federations, model versions, rounds,
//! participants and agents, in SQL through sea-orm; and facilities, enrolment
//! tokens, issued certificates and the admin-action log (`identity.rs`).
//!
//! One code path serves SQLite (the default, a file) and PostgreSQL (several
//! replicas); `Store::connect` runs the migrations. The public API speaks plain
//! row structs; sea-orm types stay inside this module.
//!
//! What the store does not do: it has no clock (callers pass Unix
//! milliseconds), holds no model bytes (those live in `crate::store::blobs`, named by
//! digest), and does not decide which round transitions are legal beyond two
//! rules: a terminal round (`Committed`, `Failed`) never moves again, and only
//! `commit_round` / `fail_round` reach a terminal state, each in one
//! transaction, so a round is never half committed.
//!
//! Invariants kept by the schema as well as the code: model versions are
//! unique per federation, round numbers are unique per federation, a round's
//! base and result versions exist, and a federation has at most one
//! unfinished round (a partial unique index), so two coordinators racing to
//! start a round cannot both succeed.

/// A fieldless enum stored as text: the enum, `ALL`, `as_str` (the stored text), `Display`
/// and `FromStr` (failing with [`ParseEnumError`] naming `$kind`), from one list.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($kind:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            pub const ALL: [$name; [$(stringify!($variant)),*].len()] = [$($name::$variant),*];

            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::store::ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::store::ParseEnumError::new($kind, s))
            }
        }
    };
}

mod accepted;
pub mod blobs;
mod convert;
mod entity;
mod error;
mod identity;
pub mod lease;
mod ledger;
pub mod ledger_view;
mod migration;
mod migration_accepted;
mod migration_blobs;
mod migration_identity;
mod migration_ledger;
mod migration_ledger_key;
mod migration_quality;
mod migration_revocation;
mod migration_round_stages;
mod round_stages;
mod rows;

use std::collections::HashSet;
use std::time::Duration;

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    SqlErr, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use convert::{participant_to_active, round_id_to_i64};
use entity::{agent, federation, model_version, participant, round};
pub use error::StoreError;
use harambee_privacy::ledger::LedgerEvent;
pub use identity::{
    AdminActionKind, AdminActionRow, CertificateRow, FacilityRow, FacilityStatus,
    RevokedCertificateRow, TokenRefusal, TokenRow,
};
pub use ledger::{CosignatureRow, LedgerKeyRow};
pub use rows::{
    AgentRow, FederationRow, MetricsRow, ModelVersionRow, ParseEnumError, ParticipantRow,
    ParticipantStatus, RoundRow, RoundState, StageRow,
};

/// Rows per multi-row INSERT: 10 columns each stays far below SQLite's
/// 32,766 and PostgreSQL's 65,535 bind parameters.
const INSERT_CHUNK: usize = 500;

/// A handle on the database; cheap to clone (a connection pool inside).
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
}

/// Names only the backend: the pool's own `Debug` prints connect options,
/// password included.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.db.get_database_backend() {
            DbBackend::Postgres => "postgres",
            DbBackend::Sqlite => "sqlite",
            _ => "other",
        };
        f.debug_struct("Store")
            .field("backend", &backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects and applies pending migrations.
    ///
    /// Accepts `sqlite://path/to/file.db?mode=rwc`, `sqlite::memory:` and
    /// `postgres://user@host:port/db` (or `postgresql://`).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let mut options = ConnectOptions::new(url);
        options.sqlx_logging(false);
        if url.starts_with("sqlite:") {
            // One connection: SQLite has a single writer anyway, and an
            // in-memory database lives exactly as long as its connection, so
            // that connection must never idle out or be recycled.
            options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None::<Duration>)
                .max_lifetime(None::<Duration>)
                .map_sqlx_sqlite_opts(|opts| {
                    opts.foreign_keys(true).busy_timeout(Duration::from_secs(5))
                });
        } else if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            // Only the scheme: a URL may carry a password.
            let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
            return Err(StoreError::UnsupportedUrl(scheme.to_owned()));
        }
        let db = Database::connect(options).await?;
        migration::Migrator::up(&db, None).await?;
        Ok(Store { db })
    }

    /// The connection pool, for the blob store's `blobs` table.
    pub(crate) fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Whether the database answers, and how many of the migrations this build knows are
    /// not applied to it (0 when it is ready).
    pub async fn pending_migrations(&self) -> Result<usize, StoreError> {
        self.db.ping().await?;
        Ok(migration::Migrator::get_pending_migrations(&self.db)
            .await?
            .len())
    }

    /// Closes the connection pool (dropping the store does so too, lazily).
    pub async fn close(self) -> Result<(), StoreError> {
        self.db.close().await?;
        Ok(())
    }

    /// Creates a federation and its initial model version in one transaction.
    pub async fn create_federation(
        &self,
        fed: &FederationRow,
        initial: &ModelVersionRow,
    ) -> Result<(), StoreError> {
        if initial.federation != fed.name {
            return Err(StoreError::InvalidInput(format!(
                "initial model version names federation {:?}, not {:?}",
                initial.federation, fed.name
            )));
        }
        if initial.round_id.is_some() {
            return Err(StoreError::InvalidInput(
                "the initial model version cannot come from a round".to_owned(),
            ));
        }
        let fed_model = convert::federation_to_active(fed);
        let version_model = convert::model_version_to_active(initial)?;

        let txn = self.db.begin().await?;
        let result = async {
            federation::Entity::insert(fed_model)
                .exec_without_returning(&txn)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::AlreadyExists(fed.name.clone())
                    } else {
                        e.into()
                    }
                })?;
            model_version::Entity::insert(version_model)
                .exec_without_returning(&txn)
                .await?;
            ledger::append_in(&txn, fed.created_ms, vec![federation_created(fed)]).await?;
            Ok(())
        }
        .await;
        finish(txn, result).await
    }

    pub async fn federation(&self, name: &str) -> Result<Option<FederationRow>, StoreError> {
        let found = federation::Entity::find_by_id(name.to_owned())
            .one(&self.db)
            .await?;
        Ok(found.map(convert::federation_from_model))
    }

    /// All federations, ordered by name.
    pub async fn federations(&self) -> Result<Vec<FederationRow>, StoreError> {
        let all = federation::Entity::find()
            .order_by_asc(federation::Column::Name)
            .all(&self.db)
            .await?;
        Ok(all
            .into_iter()
            .map(convert::federation_from_model)
            .collect())
    }

    /// Writes a consistent copy of a SQLite database to `path` (a new file), while others
    /// keep using it: `VACUUM INTO`, one read transaction's snapshot.
    pub async fn vacuum_into(&self, path: &std::path::Path) -> Result<(), StoreError> {
        if self.db.get_database_backend() != DbBackend::Sqlite {
            return Err(StoreError::InvalidInput(
                "VACUUM INTO copies SQLite databases only".into(),
            ));
        }
        let path = path
            .to_str()
            .ok_or_else(|| StoreError::InvalidInput(format!("{} is not UTF-8", path.display())))?;
        self.db
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "VACUUM INTO ?",
                [path.into()],
            ))
            .await?;
        Ok(())
    }

    /// The blob digest of every model version of every federation: what blob garbage
    /// collection keeps.
    pub async fn model_digests(&self) -> Result<HashSet<String>, StoreError> {
        let digests: Vec<String> = model_version::Entity::find()
            .select_only()
            .column(model_version::Column::Digest)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(digests.into_iter().collect())
    }

    /// The highest model version of a federation.
    pub async fn latest_model(
        &self,
        federation: &str,
    ) -> Result<Option<ModelVersionRow>, StoreError> {
        let found = model_version::Entity::find()
            .filter(model_version::Column::Federation.eq(federation))
            .order_by_desc(model_version::Column::Version)
            .one(&self.db)
            .await?;
        found.map(convert::model_version_from_model).transpose()
    }

    pub async fn model_version(
        &self,
        federation: &str,
        version: u32,
    ) -> Result<Option<ModelVersionRow>, StoreError> {
        let found = model_version::Entity::find_by_id((federation.to_owned(), i64::from(version)))
            .one(&self.db)
            .await?;
        found.map(convert::model_version_from_model).transpose()
    }

    /// Starts round `previous max + 1` of a federation in state `Created`.
    ///
    /// Fails with `RoundInProgress` while the federation has an unfinished
    /// round, `UnknownFederation`, or `UnknownModelVersion` for a base version
    /// that does not exist.
    pub async fn create_round(
        &self,
        federation: &str,
        base_version: u32,
        now_ms: i64,
    ) -> Result<RoundRow, StoreError> {
        let txn = self.db.begin().await?;
        let result = create_round_in(&txn, federation, base_version, now_ms).await;
        match finish(txn, result).await {
            // Another coordinator started a round between our check and our
            // insert: the partial unique index refused the second one.
            Err(StoreError::Db(e)) if is_unique_violation(&e) => {
                match unfinished_round(&self.db, federation).await? {
                    Some(id) => Err(StoreError::RoundInProgress(id)),
                    None => Err(StoreError::Db(e)),
                }
            }
            other => other,
        }
    }

    /// Moves an unfinished round to a non-terminal state.
    ///
    /// Refuses terminal rounds (`RoundFinished`) and terminal targets
    /// (`InvalidTransition`: those go through `commit_round` / `fail_round`).
    pub async fn set_round_state(
        &self,
        round_id: u64,
        state: RoundState,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if state.is_terminal() {
            return Err(StoreError::InvalidTransition {
                round_id,
                to: state,
            });
        }
        let id = round_id_to_i64(round_id)?;
        let txn = self.db.begin().await?;
        let result = async {
            let updated = round::Entity::update_many()
                .col_expr(round::Column::State, Expr::value(state.as_str()))
                .col_expr(round::Column::UpdatedMs, Expr::value(now_ms))
                .filter(round::Column::Id.eq(id))
                .filter(round::Column::State.is_not_in(RoundState::terminal_strs()))
                .exec(&txn)
                .await?;
            if updated.rows_affected == 0 {
                return Err(why_not_unfinished(&txn, round_id).await?);
            }
            round_stages::entered_in(&txn, &[id], state, now_ms).await
        }
        .await;
        finish(txn, result).await
    }

    /// Inserts or replaces participants of an unfinished round, keyed by
    /// `(round_id, facility)`, and appends `ledger` events at `now_ms`. Every row's
    /// `round_id` must be `round_id`.
    pub async fn save_participants(
        &self,
        round_id: u64,
        rows: &[ParticipantRow],
        now_ms: i64,
        ledger: Vec<LedgerEvent>,
    ) -> Result<(), StoreError> {
        let models = participant_models(round_id, rows)?;
        let txn = self.db.begin().await?;
        let result = async {
            lock_unfinished(&txn, round_id).await?;
            upsert_participants(&txn, models).await?;
            ledger::append_in(&txn, now_ms, ledger).await?;
            Ok(())
        }
        .await;
        finish(txn, result).await
    }

    /// In one transaction: inserts `version` (its `round_id` set to this
    /// round), upserts `participants`, marks the round `Committed` with
    /// `result_version`, and appends `ledger` events (contributions, dropouts, the
    /// commit). On any error nothing is written.
    pub async fn commit_round(
        &self,
        round_id: u64,
        version: &ModelVersionRow,
        participants: &[ParticipantRow],
        now_ms: i64,
        ledger: Vec<LedgerEvent>,
    ) -> Result<(), StoreError> {
        if version.round_id.is_some_and(|id| id != round_id) {
            return Err(StoreError::InvalidInput(format!(
                "model version {} names round {:?}, not round {round_id}",
                version.version, version.round_id
            )));
        }
        let version_model = convert::model_version_to_active(&ModelVersionRow {
            round_id: Some(round_id),
            ..version.clone()
        })?;
        let participant_models = participant_models(round_id, participants)?;
        let id = round_id_to_i64(round_id)?;

        let txn = self.db.begin().await?;
        let result = async {
            let current = lock_unfinished(&txn, round_id).await?;
            if current.federation != version.federation {
                return Err(StoreError::InvalidInput(format!(
                    "round {round_id} belongs to federation {:?}, the model version to {:?}",
                    current.federation, version.federation
                )));
            }
            // Participants first: a refused version then also exercises the
            // rollback of rows already written.
            upsert_participants(&txn, participant_models).await?;
            model_version::Entity::insert(version_model)
                .exec_without_returning(&txn)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::VersionExists {
                            federation: version.federation.clone(),
                            version: version.version,
                        }
                    } else {
                        e.into()
                    }
                })?;
            let updated = round::Entity::update_many()
                .col_expr(
                    round::Column::State,
                    Expr::value(RoundState::Committed.as_str()),
                )
                .col_expr(
                    round::Column::ResultVersion,
                    Expr::value(i64::from(version.version)),
                )
                .col_expr(round::Column::UpdatedMs, Expr::value(now_ms))
                .filter(round::Column::Id.eq(id))
                .filter(round::Column::State.is_not_in(RoundState::terminal_strs()))
                .exec(&txn)
                .await?;
            ensure_one_row(updated.rows_affected, round_id)?;
            round_stages::entered_in(&txn, &[id], RoundState::Committed, now_ms).await?;
            // The driver's own contributions are in `ledger`; the rows only back them up.
            accepted::take_in(&txn, round_id).await?;
            ledger::append_in(&txn, now_ms, ledger).await?;
            Ok(())
        }
        .await;
        finish(txn, result).await
    }

    /// In one transaction: upserts `participants`, marks the round
    /// `Failed(reason)` and appends `ledger` events (dropouts). On any error
    /// nothing is written.
    pub async fn fail_round(
        &self,
        round_id: u64,
        reason: &str,
        participants: &[ParticipantRow],
        now_ms: i64,
        ledger: Vec<LedgerEvent>,
    ) -> Result<(), StoreError> {
        let participant_models = participant_models(round_id, participants)?;
        let id = round_id_to_i64(round_id)?;

        let txn = self.db.begin().await?;
        let result = async {
            lock_unfinished(&txn, round_id).await?;
            upsert_participants(&txn, participant_models).await?;
            let updated = round::Entity::update_many()
                .col_expr(
                    round::Column::State,
                    Expr::value(RoundState::Failed.as_str()),
                )
                .col_expr(round::Column::FailureReason, Expr::value(reason))
                .col_expr(round::Column::UpdatedMs, Expr::value(now_ms))
                .filter(round::Column::Id.eq(id))
                .filter(round::Column::State.is_not_in(RoundState::terminal_strs()))
                .exec(&txn)
                .await?;
            ensure_one_row(updated.rows_affected, round_id)?;
            round_stages::entered_in(&txn, &[id], RoundState::Failed, now_ms).await?;
            accepted::take_in(&txn, round_id).await?;
            ledger::append_in(&txn, now_ms, ledger).await?;
            Ok(())
        }
        .await;
        finish(txn, result).await
    }

    pub async fn round(&self, round_id: u64) -> Result<Option<RoundRow>, StoreError> {
        let found = round::Entity::find_by_id(round_id_to_i64(round_id)?)
            .one(&self.db)
            .await?;
        found.map(convert::round_from_model).transpose()
    }

    /// The rounds of a federation ordered by number (empty if the federation
    /// does not exist).
    pub async fn rounds(&self, federation: &str) -> Result<Vec<RoundRow>, StoreError> {
        round::Entity::find()
            .filter(round::Column::Federation.eq(federation))
            .order_by_asc(round::Column::Number)
            .all(&self.db)
            .await?
            .into_iter()
            .map(convert::round_from_model)
            .collect()
    }

    /// The participants of a round ordered by facility.
    pub async fn participants(&self, round_id: u64) -> Result<Vec<ParticipantRow>, StoreError> {
        participant::Entity::find()
            .filter(participant::Column::RoundId.eq(round_id_to_i64(round_id)?))
            .order_by_asc(participant::Column::Facility)
            .all(&self.db)
            .await?
            .into_iter()
            .map(convert::participant_from_model)
            .collect()
    }

    /// Records that a facility's agent connected: inserts it, or updates its
    /// certificate digest and `last_seen_ms` (keeping `first_seen_ms`).
    pub async fn record_agent_seen(
        &self,
        facility: &str,
        cert_sha256: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let model = agent::ActiveModel {
            facility: Set(facility.to_owned()),
            cert_sha256: Set(cert_sha256.to_owned()),
            first_seen_ms: Set(now_ms),
            last_seen_ms: Set(now_ms),
        };
        agent::Entity::insert(model)
            .on_conflict(
                OnConflict::column(agent::Column::Facility)
                    .update_columns([agent::Column::CertSha256, agent::Column::LastSeenMs])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// All agents ordered by facility.
    pub async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let all = agent::Entity::find()
            .order_by_asc(agent::Column::Facility)
            .all(&self.db)
            .await?;
        Ok(all.into_iter().map(convert::agent_from_model).collect())
    }

    /// Start-up recovery after a crash: marks every unfinished round
    /// `Failed(reason)` and returns their ids in ascending order.
    ///
    /// With several coordinators on one PostgreSQL database this would also
    /// fail rounds that a live peer is driving; call it only when this process
    /// owns all rounds.
    pub async fn fail_unfinished_rounds(
        &self,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin().await?;
        let result = async {
            let unfinished: Vec<(i64, String, String)> = round::Entity::find()
                .select_only()
                .column(round::Column::Id)
                .column(round::Column::Federation)
                .column(round::Column::State)
                .filter(round::Column::State.is_not_in(RoundState::terminal_strs()))
                .order_by_asc(round::Column::Id)
                .into_tuple()
                .all(&txn)
                .await?;
            if unfinished.is_empty() {
                return Ok(Vec::new());
            }
            let ids: Vec<i64> = unfinished.iter().map(|(id, _, _)| *id).collect();
            // Each round's accepted uploads (they left their facilities), then its failure.
            // A round cut short while unmasking or evaluating may have revealed its sum.
            let mut ledger_events = Vec::new();
            for (id, federation, state) in &unfinished {
                let round_id = *id as u64;
                ledger_events.extend(accepted::take_in(&txn, round_id).await?);
                ledger_events.push(LedgerEvent::RoundFailed {
                    federation: federation.clone(),
                    round_id,
                    reason: reason.to_owned(),
                    revealed: [RoundState::Unmasking, RoundState::Evaluating]
                        .iter()
                        .any(|s| s.as_str() == state),
                });
            }
            round::Entity::update_many()
                .col_expr(
                    round::Column::State,
                    Expr::value(RoundState::Failed.as_str()),
                )
                .col_expr(round::Column::FailureReason, Expr::value(reason))
                .col_expr(round::Column::UpdatedMs, Expr::value(now_ms))
                .filter(round::Column::Id.is_in(ids.iter().copied()))
                .filter(round::Column::State.is_not_in(RoundState::terminal_strs()))
                .exec(&txn)
                .await?;
            round_stages::entered_in(&txn, &ids, RoundState::Failed, now_ms).await?;
            ledger::append_in(&txn, now_ms, ledger_events).await?;
            ids.into_iter()
                .map(|id| {
                    u64::try_from(id).map_err(|_| StoreError::CorruptRow {
                        table: "rounds",
                        detail: format!("id = {id}"),
                    })
                })
                .collect()
        }
        .await;
        finish(txn, result).await
    }
}

/// The ledger entry of a new federation: its name and privacy parameters (the `privacy`
/// table of its configuration, `null` when it has none).
fn federation_created(fed: &FederationRow) -> LedgerEvent {
    let config: serde_json::Value =
        serde_json::from_str(&fed.config_json).unwrap_or(serde_json::Value::Null);
    LedgerEvent::FederationCreated {
        name: fed.name.clone(),
        privacy: config
            .get("privacy")
            .cloned()
            .unwrap_or(serde_json::Value::Null),
    }
}

/// Commits on success, rolls back on error. Every transaction goes through
/// here, so an early `?` inside never leaves work half applied.
async fn finish<T>(
    txn: DatabaseTransaction,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match result {
        Ok(value) => {
            txn.commit().await?;
            Ok(value)
        }
        Err(err) => {
            if let Err(rollback_err) = txn.rollback().await {
                tracing::warn!(error = %rollback_err, "transaction rollback failed");
            }
            Err(err)
        }
    }
}

fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

async fn create_round_in(
    txn: &DatabaseTransaction,
    federation: &str,
    base_version: u32,
    now_ms: i64,
) -> Result<RoundRow, StoreError> {
    if federation::Entity::find_by_id(federation.to_owned())
        .one(txn)
        .await?
        .is_none()
    {
        return Err(StoreError::UnknownFederation(federation.to_owned()));
    }
    let base = model_version::Entity::find_by_id((federation.to_owned(), i64::from(base_version)))
        .one(txn)
        .await?;
    if base.is_none() {
        return Err(StoreError::UnknownModelVersion {
            federation: federation.to_owned(),
            version: base_version,
        });
    }
    if let Some(id) = unfinished_round(txn, federation).await? {
        return Err(StoreError::RoundInProgress(id));
    }
    let max_number: Option<i64> = round::Entity::find()
        .select_only()
        .column_as(round::Column::Number.max(), "max_number")
        .filter(round::Column::Federation.eq(federation))
        .into_tuple()
        .one(txn)
        .await?
        .flatten();
    let number = max_number.unwrap_or(0) + 1;
    let number = u32::try_from(number).map_err(|_| StoreError::OutOfRange {
        field: "round number",
        value: number.to_string(),
    })?;

    let model = round::ActiveModel {
        id: NotSet,
        federation: Set(federation.to_owned()),
        number: Set(i64::from(number)),
        state: Set(RoundState::Created.as_str().to_owned()),
        failure_reason: Set(None),
        base_version: Set(i64::from(base_version)),
        result_version: Set(None),
        created_ms: Set(now_ms),
        updated_ms: Set(now_ms),
    };
    let inserted = round::Entity::insert(model).exec(txn).await?;
    round_stages::entered_in(txn, &[inserted.last_insert_id], RoundState::Created, now_ms).await?;
    let id = u64::try_from(inserted.last_insert_id).map_err(|_| StoreError::CorruptRow {
        table: "rounds",
        detail: format!("id = {}", inserted.last_insert_id),
    })?;
    Ok(RoundRow {
        id,
        federation: federation.to_owned(),
        number,
        state: RoundState::Created,
        failure_reason: None,
        base_version,
        result_version: None,
        created_ms: now_ms,
        updated_ms: now_ms,
    })
}

/// The id of the federation's unfinished round, if any.
async fn unfinished_round(
    db: &impl ConnectionTrait,
    federation: &str,
) -> Result<Option<u64>, StoreError> {
    let found = round::Entity::find()
        .filter(round::Column::Federation.eq(federation))
        .filter(round::Column::State.is_not_in(RoundState::terminal_strs()))
        .one(db)
        .await?;
    found
        .map(|m| convert::round_from_model(m).map(|r| r.id))
        .transpose()
}

/// Locks an unfinished round for the rest of the transaction and returns it.
///
/// A no-op UPDATE guarded by the state takes the row lock on PostgreSQL (a
/// concurrent commit or fail waits, then sees a terminal state) and the write
/// lock on SQLite, with no backend-specific `FOR UPDATE`.
async fn lock_unfinished(
    txn: &DatabaseTransaction,
    round_id: u64,
) -> Result<round::Model, StoreError> {
    let id = round_id_to_i64(round_id)?;
    let updated = round::Entity::update_many()
        .col_expr(
            round::Column::UpdatedMs,
            Expr::col(round::Column::UpdatedMs),
        )
        .filter(round::Column::Id.eq(id))
        .filter(round::Column::State.is_not_in(RoundState::terminal_strs()))
        .exec(txn)
        .await?;
    if updated.rows_affected == 0 {
        return Err(why_not_unfinished(txn, round_id).await?);
    }
    round::Entity::find_by_id(id)
        .one(txn)
        .await?
        .ok_or(StoreError::UnknownRound(round_id))
}

/// After a state-guarded UPDATE touched no row: is the round missing or
/// finished?
async fn why_not_unfinished(
    db: &impl ConnectionTrait,
    round_id: u64,
) -> Result<StoreError, StoreError> {
    let found = round::Entity::find_by_id(round_id_to_i64(round_id)?)
        .one(db)
        .await?;
    Ok(match found.map(convert::round_from_model).transpose()? {
        None => StoreError::UnknownRound(round_id),
        Some(round) => StoreError::RoundFinished {
            round_id,
            state: round.state,
        },
    })
}

/// The final state-guarded UPDATE runs while the round is locked, so it must
/// touch exactly one row.
fn ensure_one_row(rows_affected: u64, round_id: u64) -> Result<(), StoreError> {
    match rows_affected {
        1 => Ok(()),
        n => Err(StoreError::CorruptRow {
            table: "rounds",
            detail: format!("updating round {round_id} touched {n} rows"),
        }),
    }
}

fn participant_models(
    round_id: u64,
    rows: &[ParticipantRow],
) -> Result<Vec<participant::ActiveModel>, StoreError> {
    let mut seen = HashSet::with_capacity(rows.len());
    rows.iter()
        .map(|row| {
            if !seen.insert(row.facility.as_str()) {
                return Err(StoreError::InvalidInput(format!(
                    "facility {:?} listed twice for round {round_id}",
                    row.facility
                )));
            }
            participant_to_active(round_id, row)
        })
        .collect()
}

async fn upsert_participants(
    txn: &DatabaseTransaction,
    models: Vec<participant::ActiveModel>,
) -> Result<(), StoreError> {
    use participant::Column as C;
    for chunk in models.chunks(INSERT_CHUNK) {
        participant::Entity::insert_many(chunk.iter().cloned())
            .on_conflict(
                OnConflict::columns([C::RoundId, C::Facility])
                    .update_columns([
                        C::Status,
                        C::NSamples,
                        C::UpdateSha256,
                        C::Detail,
                        C::MetricsNSamples,
                        C::MetricsLoss,
                        C::MetricsAccuracy,
                        C::MetricsAuc,
                        C::MetricsNPositives,
                        C::MetricsSensitivity,
                        C::MetricsSpecificity,
                        C::MetricsEce,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}
