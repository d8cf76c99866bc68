use clap::Parser;
use entitled::config::{Cli, Command, LogFormat, NotifyCommand};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            entitled::telemetry::init_logs(args.log_format == LogFormat::Json);
            match actix_web::rt::System::new().block_on(entitled::serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    // Through the logger, so that --log-format json stays JSON.
                    tracing::error!("entitled: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Rebuild(args) => {
            let check = args.check;
            match entitled::rebuild(args) {
                Ok(summary) if check && summary.differs() => {
                    println!("differs: {summary}");
                    ExitCode::FAILURE
                }
                Ok(summary) if check => {
                    println!("matches: {summary}");
                    ExitCode::SUCCESS
                }
                Ok(summary) => {
                    println!("rebuilt: {summary}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("entitled: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Import(args) => match entitled::cli::import(args) {
            Ok(summary) => {
                println!("{summary}");
                if summary.failed > 0 {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(error) => fail(error),
        },
        Command::Migrate(args) => match entitled::cli::migrate(args) {
            Ok(copied) => {
                println!("migrated: {copied}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(error),
        },
        Command::Access(args) => {
            entitled::cli::access(args).map_or_else(fail, |()| ExitCode::SUCCESS)
        }
        Command::Events(args) => {
            entitled::cli::events(args).map_or_else(fail, |()| ExitCode::SUCCESS)
        }
        Command::Notify(NotifyCommand::Status(args)) => {
            entitled::cli::notify_status(args).map_or_else(fail, |()| ExitCode::SUCCESS)
        }
        Command::Notify(NotifyCommand::Replay(args)) => match entitled::cli::notify_replay(args) {
            Ok(said) => {
                println!("{said}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(error),
        },
        Command::Sync(args) => match entitled::refresh::sync::sync(args) {
            Ok(summary) => {
                println!("{summary}");
                if summary.failed.is_empty() && !summary.interrupted {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(error @ entitled::refresh::sync::SyncError::Unauthorized) => {
                eprintln!("entitled: {error}");
                ExitCode::from(2)
            }
            Err(error) => fail(error),
        },
    }
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("entitled: {error}");
    ExitCode::FAILURE
}
