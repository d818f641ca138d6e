// Every record allocates short-lived strings and buffers on one thread and
// frees them on another; glibc malloc spent a third of herald's CPU on that
// and held on to freed memory per thread.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use herald::config::Command;

fn main() {
    // Before the runtime starts: a mistake in the flags exits with clap's
    // message, and nothing has been started that would need stopping.
    let config = herald::Config::from_env();
    herald::telemetry::init(config.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    let result = runtime.block_on(async {
        match config.command.clone() {
            Some(Command::Migrate) => herald::migrate(&config).await,
            Some(Command::Dlq { command }) => herald::dlq(&config, command).await,
            Some(Command::Api(args)) => herald::api(&config, &args, herald::Provided::default(), shutdown_signal()).await,
            Some(Command::Check { .. }) => herald::check_config(&config),
            None => herald::run(config, shutdown_signal()).await,
        }
    });
    // Exits here rather than by returning: dropping the runtime would wait
    // for its blocking threads, and a consumer closing against a stalled
    // broker (given up on at the shutdown deadline) holds one for minutes.
    match result {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            tracing::error!(message = "herald stopped.", %error);
            std::process::exit(1)
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
