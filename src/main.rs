// Every record allocates short-lived strings and buffers on one thread and
// frees them on another; glibc malloc spent a third of herald's CPU on that
// and held on to freed memory per thread.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = herald::Config::from_env();
    herald::telemetry::init(config.log_format);
    let result = match config.command.clone() {
        Some(herald::config::Command::Migrate) => herald::migrate(&config).await,
        Some(herald::config::Command::Dlq { command }) => herald::dlq(&config, command).await,
        None => herald::run(config, shutdown_signal()).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(message = "herald stopped.", %error);
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!(message = "Shutdown requested.");
}
