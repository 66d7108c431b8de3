use clap::Parser;
use ringlb::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => {
            ringlb::telemetry::init();
            ringlb::app::up(*args).await
        }
        Command::Replica(args) => Ok(ringlb_replica::run(args).await?),
        Command::Operator(args) => {
            ringlb::telemetry::init();
            ringlb::operator::app::run(*args).await
        }
        Command::Proxy(args) => {
            ringlb::telemetry::init();
            ringlb::cluster_proxy::run(*args).await
        }
        Command::Healthcheck(args) => ringlb::app::healthcheck(args).await,
        Command::Crd => {
            print!("{}", ringlb::operator::crd::crd_yaml());
            Ok(())
        }
    }
}
