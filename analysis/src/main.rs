use clap::Parser;
use ringlb_analyze::AnalyzeArgs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ringlb_analyze::run(AnalyzeArgs::parse()).await
}
