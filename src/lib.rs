//! entitled: Adapty subscription webhooks in, "is this user premium right now?" out.
//!
//! The data flows one way, and each module owns one step:
//! HTTP ([`http`]) → wire format ([`adapty`]) → projection ([`projection`], pure) →
//! store ([`store`], one writer) → index ([`index`], committed state in memory) → HTTP.

pub mod adapty;
pub mod config;
pub mod http;
pub mod index;
pub mod projection;
pub mod store;
pub mod telemetry;
pub mod timestamp;

use actix_web::{web, App, HttpServer};
use adapty::Webhook;
use config::ServeArgs;
use http::auth::{ReadAuth, WebhookAuth};
use http::AppState;
use index::{Change, Index};
use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;
use store::writer::{self, Decode};

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
}

/// Start-up (open and migrate, warm the index, start the writer, bind), then serve
/// until SIGTERM or SIGINT; then drain: stop accepting, finish requests in flight,
/// commit what the writer holds, checkpoint.
pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let conn = store::open(&args.store.db, args.store.synchronous)?;
    let index = Arc::new(Index::new());
    let started = Instant::now();
    warm(&conn, &index)?;
    tracing::info!(
        db = %args.store.db.display(),
        profiles = index.profile_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "index warmed"
    );

    let event_names = Arc::new(args.projection.event_names.clone());
    let decode: Arc<Decode> = {
        let names = event_names.clone();
        Arc::new(
            move |body: &str| match adapty::parse(body.as_bytes(), &names) {
                Ok(Webhook::Event(received)) => Some(received.event),
                _ => None,
            },
        )
    };
    let rules = Arc::new(args.projection.rules());
    let (writer, writer_thread) = writer::start(conn, index.clone(), rules, decode)?;

    let webhook_auth = WebhookAuth::new(args.webhook_token, args.sandbox_webhook_token);
    if webhook_auth.is_open() {
        tracing::warn!(
            "NO WEBHOOK TOKEN IS SET: anyone who can reach POST /webhooks/adapty can grant access. \
             Set --webhook-token (ENTITLED_WEBHOOK_TOKEN) to the Authorization value entered in Adapty."
        );
    }
    let state = web::Data::new(AppState {
        writer: writer.clone(),
        index,
        event_names,
        webhook_auth,
        read_auth: ReadAuth::new(args.read_token),
    });

    let listener = TcpListener::bind(args.listen).map_err(|source| ServeError::Listen {
        addr: args.listen,
        source,
    })?;
    let addr = listener.local_addr()?;
    let server =
        HttpServer::new(move || App::new().app_data(state.clone()).configure(http::routes))
            .listen(listener)?
            .shutdown_timeout(10)
            .run();
    tracing::info!(%addr, "listening");
    // The one line on stdout: scripts and tests wait for it.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "entitled listening on http://{addr}")?;
    stdout.flush()?;

    let served = server.await;
    writer.stop().await;
    drop(writer);
    writer_thread
        .join()
        .map_err(|_| ServeError::WriterPanicked)?;
    tracing::info!("stopped");
    Ok(served?)
}

/// Loads committed state into the index.
fn warm(conn: &rusqlite::Connection, index: &Index) -> Result<(), store::StoreError> {
    let mut changes = Vec::new();
    store::each_entitlement(conn, |row| {
        changes.push(Change::Level {
            profile_id: Arc::from(row.profile_id),
            access_level_id: Arc::from(row.access_level_id),
            entitlement: Some(row.entitlement),
        });
        if changes.len() >= 10_000 {
            index.apply(changes.drain(..));
        }
    })?;
    store::each_customer_user_id(conn, |profile_id, customer_user_id| {
        changes.push(Change::CustomerUserId {
            profile_id: Arc::from(profile_id),
            customer_user_id: Arc::from(customer_user_id),
        });
    })?;
    index.apply(changes);
    Ok(())
}
