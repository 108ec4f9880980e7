use std::process::ExitCode;

use clap::Parser;
use mqdispatch::InputError;
use mqdispatch::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    mqdispatch::cli::init_tracing(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(mqdispatch::cli::dispatch(cli.command));
    // Every task (and the children it owns) ends with the runtime; then the child guard.
    drop(runtime);
    mqdispatch::process::guard::finish();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<InputError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
