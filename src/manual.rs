//! The man page and shell completions, generated from the same clap definitions that parse the
//! command line ([`crate::cli`]), so they never disagree with `--help`.
//!
//! `ringfs man` prints the page (roff) and `ringfs completions bash|zsh|fish|elvish|powershell`
//! the completion script, both to stdout; the README says where to put them.

use std::io::Write;

use clap::{CommandFactory, Parser};

/// `ringfs completions SHELL`.
#[derive(Debug, Parser)]
#[command(
    name = "ringfs completions",
    about = "Print the shell completion script for SHELL to stdout"
)]
pub struct CompletionsFlags {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

/// `ringfs man`.
#[derive(Debug, Parser)]
#[command(
    name = "ringfs man",
    about = "Print the man page ringfs(1) (roff) to stdout, or write every page into DIR"
)]
pub struct ManFlags {
    /// Write ringfs.1 and a page per subcommand (ringfs-cache.1, ...) into this directory
    /// instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

/// The whole command as users see it: the mount, and every subcommand beside it. The mount's
/// flags are not a clap subcommand tree (its SOURCE MOUNTPOINT positionals come first, as
/// mount(8) calls it), so the subcommands are attached here for the page and the completions.
pub fn command() -> clap::Command {
    crate::cli::Flags::command()
        .subcommand(crate::cli::CacheFlags::command().name("cache"))
        .subcommand(crate::cli::WatchFlags::command().name("watch"))
        .subcommand(crate::cli::StatusFlags::command().name("status"))
        .subcommand(crate::cli::ArchiveFlags::command().name("archive"))
        .subcommand(CompletionsFlags::command().name("completions"))
        .subcommand(ManFlags::command().name("man"))
        .args_conflicts_with_subcommands(true)
}

/// Writes the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut cmd = command();
    clap_complete::generate(shell, &mut cmd, "ringfs", out);
}

/// Writes ringfs(1), whose SUBCOMMANDS section points to the subcommands' pages.
pub fn man(out: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    // The request-cost table of `--help`, kept as a table (clap_mangen would fill it as prose).
    if let Some(extra) = cmd.get_after_help() {
        let text = extra.to_string();
        let (head, table) = text.split_once('\n').unwrap_or(("", &text));
        writeln!(out, ".SH \"REQUEST COSTS\"")?;
        writeln!(out, "{}", roff_escape(head))?;
        writeln!(out, ".PP\n.nf")?;
        for line in table.lines() {
            writeln!(out, "{}", roff_escape(line.trim_start()))?;
        }
        writeln!(out, ".fi")?;
    }
    man.render_version_section(out)
}

/// Text as a roff line: backslashes and hyphens escaped, no line starting with a control
/// character.
fn roff_escape(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// Writes ringfs.1 and one page per subcommand (`ringfs-cache-info.1`, ...) into `dir`.
pub fn man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    clap_mangen::generate_to(command(), dir)
}

/// Runs `ringfs completions ...` or `ringfs man ...` (`args` start with the subcommand's name).
pub fn main(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    if args.first().is_some_and(|a| a == "man") {
        let name = std::iter::once("ringfs man".into()).chain(args.into_iter().skip(1));
        let flags = ManFlags::try_parse_from(name).unwrap_or_else(|e| e.exit());
        match flags.dir {
            Some(dir) => man_pages(&dir)?,
            None => man(&mut stdout)?,
        }
        return Ok(());
    }
    let name = std::iter::once("ringfs completions".into()).chain(args.into_iter().skip(1));
    let flags = CompletionsFlags::try_parse_from(name).unwrap_or_else(|e| e.exit());
    completions(flags.shell, &mut stdout);
    Ok(())
}
