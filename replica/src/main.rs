use clap::Parser;
use ringlb_replica::ReplicaArgs;

/// ringlb-replica: answers GET /home with its name and GET /heartbeat with 200.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    replica: ReplicaArgs,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    ringlb_replica::run(Cli::parse().replica).await
}
