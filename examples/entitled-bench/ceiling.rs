//! The HTTP ceiling: an actix-web server whose one handler answers
//! `GET /profiles/{id}/access` with a constant body (a real answer of the daemon, the
//! same size, with the same `Cache-Control` and `ETag` headers), on actix's default
//! worker count, like the daemon. Runs as this example started with
//! `--serve-ceiling FILE`, under the same `taskset` as the daemon.

use actix_web::{web, App, HttpResponse, HttpServer};
use entitled_loadgen::procs::{self, Pinning, Result, Server};
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;

/// Starts this example again as the HTTP-ceiling server, under the daemon's pinning.
pub fn spawn(pin: &Pinning, body_file: &Path, log: &Path) -> Result<Server> {
    let exe = std::env::current_exe()?;
    let mut cmd = pin.command(&exe);
    cmd.arg("--serve-ceiling").arg(body_file);
    procs::spawn_server(cmd, log, "ceiling listening on http://", 0)
}

pub struct Constant {
    body: web::Bytes,
    cache_control: String,
    etag: String,
}

/// File layout: line 1 `Cache-Control` value, line 2 `ETag` value, then the body.
pub fn write_file(path: &Path, head: &str, body: &[u8]) -> std::io::Result<()> {
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let mut f = std::fs::File::create(path)?;
    writeln!(f, "{}", header("cache-control"))?;
    writeln!(f, "{}", header("etag"))?;
    f.write_all(body)
}

pub fn serve(file: &Path) -> std::io::Result<()> {
    let content = std::fs::read(file)?;
    let mut parts = content.splitn(3, |b| *b == b'\n');
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let cache_control = next();
    let etag = next();
    let body = web::Bytes::from(parts.next().unwrap_or_default().to_vec());
    let constant = web::Data::new(Constant {
        body,
        cache_control,
        etag,
    });
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(constant.clone())
                .route("/profiles/{profile_id}/access", web::get().to(answer))
        })
        .listen(listener)?
        .run();
        println!("ceiling listening on http://{addr}");
        std::io::stdout().flush()?;
        server.await
    })
}

async fn answer(constant: web::Data<Constant>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("cache-control", constant.cache_control.as_str()))
        .insert_header(("etag", constant.etag.as_str()))
        .body(constant.body.clone())
}
