//! `entitled serve`, from start to stop. [`serve`] is the table of contents; each step
//! is a function below, in the order it runs.

use crate::adapty::Decoder;
use crate::config::{ServeArgs, VerifyBeforeLapse};
use crate::http::auth::{ReadAuth, WebhookAuth};
use crate::http::{self, AppState};
use crate::index::Index;
use crate::notify::{self, Notifier};
use crate::refresh::{lapse, AdaptyApi, Refresher};
use crate::status::Status;
use crate::store;
use crate::store::postgres::{self as pg, reader::PgReader};
use crate::store::reader::{Reader, SqliteReader};
use crate::store::writer::{self, Queue, Writer, WriterHandle};
use crate::telemetry;
use actix_web::dev::ServerHandle;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing_actix_web::TracingLogger;
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the database: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the writer thread panicked")]
    WriterPanicked,
    #[error("warming the index panicked")]
    WarmUpPanicked,
    #[error("the HTTP server panicked")]
    ServerPanicked,
}

/// Start-up: open and migrate the database, bind, serve (`/readyz` says 503 while the
/// index warms), warm the index, start the writer, ready. Then serve until SIGTERM or
/// SIGINT; then drain: stop accepting, finish requests in flight, commit what the
/// writer holds, checkpoint, return.
pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    if let Some(url) = postgres_url(&args) {
        return serve_on_postgres(url, args).await;
    }
    let (mut conn, _lock) = store::open(&args.store.db, args.store.synchronous.into())?;
    finish_upgrade(&mut conn, &args)?;
    telemetry::metrics_handle();
    // Counted through the memory map, like the warm-up scan: a full scan through the
    // page cache would leave it holding the profiles table, megabytes nobody reads.
    let profiles = store::with_mmap(&conn, || store::profile_count(&conn))?;
    let reader = SqliteReader::open(
        &args.store.db,
        Decoder::new(args.projection.event_names.clone()),
        Arc::new(args.projection.rules()),
    )?;
    let (state, queue) = build_state(&args, profiles, Arc::new(reader))?;
    let server = start_http(&args, state.clone())?;
    stop_on_signal(state.status.clone(), server.handle.clone());
    tracing::info!(addr = %server.addr, "listening; warming the index");
    let conn = match warm_index(conn, &state, &args).await {
        Ok(conn) => conn,
        Err(error) => {
            server.handle.stop(false).await;
            return Err(error);
        }
    };
    let writer_thread = start_writer(conn, &state, &args, queue)?;
    start_push(&state).await?;
    serve_until_stopped(&state, server, writer_thread).await
}

/// What a schema upgrade left for a start with the configuration (a rebuild, when
/// stored events already declared shared access): done before the index warms, so it
/// warms from the rebuilt table.
fn finish_upgrade(conn: &mut rusqlite::Connection, args: &ServeArgs) -> Result<(), ServeError> {
    let decoder = Decoder::new(args.projection.event_names.clone());
    let rules = args.projection.rules();
    store::rebuild::finish_upgrade(conn, &rules, &decoder, crate::timestamp::Timestamp::now())?;
    Ok(())
}

/// What every worker shares, built once outside the server factory, and the writer's
/// queue (handlers may hold its handle, and be told to come back, while the index
/// warms).
fn build_state(
    args: &ServeArgs,
    profiles: usize,
    reader: Arc<dyn Reader>,
) -> Result<(web::Data<AppState>, Queue), ServeError> {
    let rules = Arc::new(args.projection.rules());
    let decoder = Decoder::new(args.projection.event_names.clone());
    let (writer, queue) = writer::queue();
    let webhook_auth = WebhookAuth::new(
        [
            args.webhook_token.clone(),
            args.previous_webhook_token.clone(),
        ],
        [
            args.sandbox_webhook_token.clone(),
            args.previous_sandbox_webhook_token.clone(),
        ],
    );
    if webhook_auth.is_open() {
        tracing::warn!(
            "NO WEBHOOK TOKEN IS SET: anyone who can reach POST /webhooks/adapty can grant access. \
             Set --webhook-token (ENTITLED_WEBHOOK_TOKEN) to the Authorization value entered in Adapty."
        );
    }
    let index = Arc::new(Index::with_capacity(profiles));
    let refresher = adapty_api(args, &writer, &index)?;
    let status = Arc::new(Status::new());
    let notifier = push(args, &status)?;
    let state = web::Data::new(AppState {
        writer,
        index,
        status,
        decoder,
        rules,
        reader,
        webhook_auth,
        read_auth: ReadAuth::new(args.read_token.clone()),
        refresher,
        notifier,
    });
    Ok((state, queue))
}

/// Push delivery, when a URL is set (it starts once the writer runs).
fn push(args: &ServeArgs, status: &Arc<Status>) -> Result<Option<Arc<Notifier>>, ServeError> {
    let (Some(url), Some(secret)) = (&args.notify.notify_url, &args.notify.notify_secret) else {
        return Ok(None);
    };
    let settings = notify::Settings {
        url: url.clone(),
        signer: notify::Signer::new(secret)
            .map_err(|e| ServeError::Io(std::io::Error::other(e)))?,
        access_levels: args.notify.notify_access_levels.iter().cloned().collect(),
        retry_for: args.notify.notify_retry_for,
    };
    // Push's own connection: SQLite's at `synchronous=NORMAL` (store::notify says
    // why); PostgreSQL's outside the pool, holding the delivery lock when it delivers.
    let store: Box<dyn store::notify::NotifyStore> = match store::postgres_url(&args.store.db) {
        Some(url) => Box::new(pg::notify::PgNotify::new(url)),
        None => Box::new(store::connect(&args.store.db, store::Synchronous::Normal)?),
    };
    Ok(Some(Notifier::new(store, settings, status.clone())))
}

/// Makes push's cursor and starts its thread, once the writer runs and before the
/// daemon takes events (on the blocking pool: the store's calls block).
async fn start_push(state: &AppState) -> Result<(), ServeError> {
    if let Some(notifier) = state.notifier.clone() {
        blocking(move || notifier.start()).await?;
    }
    Ok(())
}

/// Requests a second the daemon makes to Adapty's API at most (refresh routes,
/// `wait_for`, checks before a lapse together).
const DAEMON_ADAPTY_RATE: u32 = 10;

/// Adapty's server-side API, when a key is set.
fn adapty_api(
    args: &ServeArgs,
    writer: &WriterHandle,
    index: &Arc<Index>,
) -> Result<Option<Arc<Refresher>>, ServeError> {
    let Some(key) = args.adapty.adapty_secret_key.clone() else {
        tracing::info!("no --adapty-secret-key: refresh routes, wait_for's question to Adapty and verify-before-lapse are off");
        return Ok(None);
    };
    let api = AdaptyApi::new(&args.adapty.adapty_api_url, key, DAEMON_ADAPTY_RATE)
        .map_err(|e| ServeError::Io(std::io::Error::other(e)))?;
    Ok(Some(Arc::new(Refresher::new(
        api,
        writer.clone(),
        index.clone(),
    ))))
}

/// The HTTP server, bound and running.
struct Running {
    addr: SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn start_http(args: &ServeArgs, state: web::Data<AppState>) -> Result<Running, ServeError> {
    let server = HttpServer::new(move || {
        let (app, openapi) = App::new()
            .into_utoipa_app()
            .openapi(http::ApiDoc::openapi())
            .app_data(state.clone())
            .app_data(http::query_config())
            .app_data(http::json_config())
            .configure(http::routes)
            .split_for_parts();
        app.app_data(web::Data::new(openapi))
            .default_service(web::to(http::not_found))
            .wrap(from_fn(http::observe))
            .wrap(TracingLogger::<http::RootSpan>::new())
    })
    // Bounded everything: request heads must arrive within 5 s, idle keep-alive
    // connections close after 30 s, and each worker holds at most 10,000 connections.
    .client_request_timeout(Duration::from_secs(5))
    .client_disconnect_timeout(Duration::from_secs(1))
    .keep_alive(Duration::from_secs(30))
    .max_connections(10_000)
    // Applies to sockets the server binds itself (not to a listener handed to it).
    .backlog(2048)
    .bind(args.listen)
    .map_err(|source| ServeError::Listen {
        addr: args.listen,
        source,
    })?
    .shutdown_timeout(args.shutdown_timeout)
    // Our own handler: actix-server's stops gracefully on SIGTERM but drops requests
    // in flight on SIGINT, and cannot wake the change feed's long polls.
    .disable_signals();
    // Port 0 means "any": say which one it was.
    let addr = server.addrs().first().copied().unwrap_or(args.listen);
    let server = server.run();
    let handle = server.handle();
    let task = actix_web::rt::spawn(server);
    Ok(Running { addr, handle, task })
}

/// On SIGTERM or SIGINT: `/readyz` turns 503 and parked long polls answer now, so the
/// drain that follows is short.
fn stop_on_signal(status: Arc<Status>, handle: ServerHandle) {
    actix_web::rt::spawn(async move {
        match stop_signal().await {
            Ok(signal) => tracing::info!(signal, "stopping: finishing requests in flight"),
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM/SIGINT; stopping");
            }
        }
        status.set_stopped();
        handle.stop(true).await;
    });
}

/// Waits for SIGTERM or SIGINT; both mean "stop gracefully".
async fn stop_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}

/// Loads committed state into the index on a blocking thread; gives the connection back
/// for the writer.
async fn warm_index(
    conn: rusqlite::Connection,
    state: &AppState,
    args: &ServeArgs,
) -> Result<rusqlite::Connection, ServeError> {
    let started = Instant::now();
    let (index, status) = (state.index.clone(), state.status.clone());
    let conn = actix_web::rt::task::spawn_blocking(move || {
        store::warm_index(&conn, &index, &status).map(|()| conn)
    })
    .await
    .map_err(|_| ServeError::WarmUpPanicked)??;
    tracing::info!(
        db = %args.store.db.display(),
        profiles = state.index.profile_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "index warmed"
    );
    Ok(conn)
}

/// The writer thread (and its sync and checkpoint threads) on the warmed connection.
fn start_writer(
    conn: rusqlite::Connection,
    state: &AppState,
    args: &ServeArgs,
    queue: Queue,
) -> Result<JoinHandle<()>, ServeError> {
    let writer = Writer {
        conn,
        index: state.index.clone(),
        status: state.status.clone(),
        rules: state.rules.clone(),
        decode: Arc::new(state.decoder.clone()),
        lapses: lapse_checks(state, args),
    };
    Ok(writer.start(queue)?)
}

/// Verify-before-lapse, when on: where the writer sends levels that lapsed while set to
/// renew.
fn lapse_checks(
    state: &AppState,
    args: &ServeArgs,
) -> Option<tokio::sync::mpsc::UnboundedSender<store::Lapse>> {
    match (&state.refresher, args.verify_before_lapse) {
        (Some(refresher), VerifyBeforeLapse::After(delay)) => {
            let (to_check, lapses) = tokio::sync::mpsc::unbounded_channel();
            let (refresher, index) = (refresher.clone(), state.index.clone());
            actix_web::rt::spawn(lapse::verify(refresher, index, delay, lapses));
            tracing::info!(delay = ?delay, "verify-before-lapse is on");
            Some(to_check)
        }
        _ => None,
    }
}

/// The clock ends access with no event: let the writer report expiries each second.
fn tick_every_second(writer: WriterHandle) {
    actix_web::rt::spawn(async move {
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        loop {
            every_second.tick().await;
            writer.tick();
        }
    });
}

/// Ready: the clock ticks, the listening line; then serve until a signal stops the
/// server, and stop the writer.
async fn serve_until_stopped(
    state: &AppState,
    server: Running,
    writer_thread: JoinHandle<()>,
) -> Result<(), ServeError> {
    state.status.set_warmed();
    tick_every_second(state.writer.clone());
    announce(server.addr)?;
    let served = server.task.await.map_err(|_| ServeError::ServerPanicked)?;
    stop_writer(&state.writer, writer_thread).await?;
    tracing::info!("stopped");
    Ok(served?)
}

/// The one line on stdout: scripts and tests wait for it.
fn announce(addr: SocketAddr) -> std::io::Result<()> {
    let mut stdout = std::io::stdout();
    writeln!(stdout, "entitled listening on http://{addr}")?;
    stdout.flush()
}

/// Commits what the writer holds, checkpoints, and waits for its thread.
async fn stop_writer(writer: &WriterHandle, thread: JoinHandle<()>) -> Result<(), ServeError> {
    writer.stop().await;
    thread.join().map_err(|_| ServeError::WriterPanicked)
}

// ---- PostgreSQL ---------------------------------------------------------------------

/// Connections an instance opens to PostgreSQL at most: the writer, the follower, the
/// read pool's few (the listener has its own).
const POSTGRES_POOL: u32 = 6;

/// The `--db` URL, when it names PostgreSQL.
fn postgres_url(args: &ServeArgs) -> Option<String> {
    store::postgres_url(&args.store.db).map(str::to_owned)
}

/// `entitled serve` on PostgreSQL: the same steps as on SQLite, with the store's
/// PostgreSQL rooms (store/postgres): open and migrate under a lock, warm, then the
/// writer and the follower that keeps the index on what every instance commits. Every
/// call to PostgreSQL runs on a blocking thread (the driver is blocking).
async fn serve_on_postgres(url: String, args: ServeArgs) -> Result<(), ServeError> {
    // The pool connects on first use: the daemon listens (503 `not_ready`) whether or
    // not PostgreSQL answers yet.
    let pool = pg::pool(&url, POSTGRES_POOL)?;
    telemetry::metrics_handle();
    let decoder = Decoder::new(args.projection.event_names.clone());
    let reader = PgReader::new(pool.clone(), decoder, Arc::new(args.projection.rules()));
    let (state, queue) = build_state(&args, 0, Arc::new(reader))?;
    let server = start_http(&args, state.clone())?;
    stop_on_signal(state.status.clone(), server.handle.clone());
    tracing::info!(addr = %server.addr, db = %pg::redact(&url), "listening; warming the index from PostgreSQL");
    let started = Instant::now();
    let follower = match migrate_and_warm(&pool, &url, &state).await {
        Ok(follower) => follower,
        Err(error) => {
            server.handle.stop(false).await;
            // The pool's connections close by blocking, which an async thread must not.
            let _ = actix_web::rt::task::spawn_blocking(move || drop((state, pool))).await;
            return Err(error);
        }
    };
    let (rules, decode) = (state.rules.clone(), Arc::new(state.decoder.clone()));
    let (lapses, status) = (lapse_checks(&state, &args), state.status.clone());
    let writer_thread =
        blocking(move || pg::start(follower, &pool, status, rules, decode, lapses, queue)).await?;
    start_push(&state).await?;
    tracing::info!(
        profiles = state.index.profile_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "index warmed"
    );
    serve_until_stopped(&state, server, writer_thread).await
}

/// Migrates and warms, trying again each second while PostgreSQL is unreachable (an
/// instance started during an outage serves once it ends; `/readyz` says why not
/// meanwhile); gives up on anything else (a foreign or newer schema) or on a stop.
async fn migrate_and_warm(
    pool: &pg::Pool,
    url: &str,
    state: &AppState,
) -> Result<pg::follow::Follower, ServeError> {
    let mut tries = 0u32;
    loop {
        let (pool, url) = (pool.clone(), url.to_owned());
        let (index, status) = (state.index.clone(), state.status.clone());
        let warmed = actix_web::rt::task::spawn_blocking(move || {
            pg::migrate(&pool, &url)?;
            pg::follow::warm(&pool, &url, index, status)
        })
        .await
        .map_err(|_| ServeError::WarmUpPanicked)?;
        match warmed {
            Ok(follower) => return Ok(follower),
            Err(error) if pg::is_transient(&error) && !state.status.is_stopped() => {
                if tries.is_multiple_of(30) {
                    tracing::error!(%error, "cannot reach PostgreSQL; trying again each second");
                }
                state.status.record_failure(error.to_string());
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Runs a call to the store on the blocking pool.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, store::StoreError> + Send + 'static,
) -> Result<T, ServeError> {
    Ok(actix_web::rt::task::spawn_blocking(call)
        .await
        .map_err(|_| ServeError::WarmUpPanicked)??)
}
