//! `stek snippet`: the server configuration lines that read the files stek writes.

use std::path::Path;
use std::process::ExitCode;

use stek_node::Config;

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    if config.targets.is_empty() {
        println!("# {} has no [[target]] sections", path.display());
    }
    for t in &config.targets {
        println!(
            "# target[{}]: format \"{}\" at {}",
            t.index,
            t.format.info().name,
            t.path.display()
        );
        print!("{}", t.format.snippet(&t.path.display().to_string()));
        println!();
    }
    Ok(ExitCode::SUCCESS)
}
