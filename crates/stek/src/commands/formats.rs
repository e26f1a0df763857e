//! `stek formats`: what stek can write.

use std::process::ExitCode;

use stek_core::formats::{Delivery, Layout, REGISTRY};

pub fn run() -> anyhow::Result<ExitCode> {
    println!(
        "{:<16} {:<9} {:<10} {:<8} summary",
        "format", "layout", "key bytes", "applied"
    );
    for f in REGISTRY {
        let sizes: Vec<String> = f.key_sizes.iter().map(|s| s.to_string()).collect();
        println!(
            "{:<16} {:<9} {:<10} {:<8} {}",
            f.name,
            match f.layout {
                Layout::File => "file",
                Layout::Directory => "directory",
            },
            sizes.join(","),
            match f.delivery {
                Delivery::Reload => "reload",
                Delivery::HaproxyRuntime => "runtime",
            },
            f.summary
        );
    }
    Ok(ExitCode::SUCCESS)
}
