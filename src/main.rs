use clap::Parser;
use entitled::config::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            entitled::telemetry::init_logs(args.log_format);
            match actix_web::rt::System::new().block_on(entitled::serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "entitled stopped");
                    eprintln!("entitled: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
