//! `dynia completions SHELL` and the hidden `dynia man DIR`: shell
//! completions and man pages generated from the CLI definition (`cli.rs`),
//! so they describe exactly the binary that prints them. The package build
//! (`deploy/deb/build.sh`) runs both on the release binary; why a
//! subcommand rather than a build script: docs/packaging.md.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::exit;

/// `dynia completions SHELL`: the script on standard output.
pub fn completions(shell: clap_complete::Shell) -> u8 {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "dynia", &mut std::io::stdout());
    exit::OK
}

/// `dynia man DIR`: `dynia.1` and `dynia-SUB[-SUB].1` for every visible
/// subcommand.
pub fn man(dir: &Path) -> u8 {
    match write_pages(dir) {
        Ok(n) => {
            println!("wrote {n} man pages to {}", dir.display());
            exit::OK
        }
        Err(e) => {
            eprintln!("dynia man: {e:#}");
            exit::FAILED
        }
    }
}

fn write_pages(dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut n = 0;
    write_tree(dir, &cmd, "dynia", &mut n)?;
    Ok(n)
}

fn write_tree(dir: &Path, cmd: &clap::Command, name: &str, n: &mut usize) -> anyhow::Result<()> {
    let page = cmd.clone().display_name(name.to_string());
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    *n += 1;
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_tree(dir, sub, &format!("{name}-{}", sub.get_name()), n)?;
    }
    Ok(())
}
