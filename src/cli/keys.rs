//! `copilot keys` (part of the binary): makes API keys for `[auth]`. The key goes to the client;
//! only its hash goes into the server's configuration.

use std::process::ExitCode;

use copilot::auth::{KeyHash, new_key};

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Print a fresh random key, and its `[[auth.keys]]` entry for the configuration.
    New {
        /// The name logs and traces will show for calls made with the key.
        #[arg(long, default_value = "my-client")]
        name: String,
    },
    /// Print the hash of an existing key read from standard input.
    Hash,
}

pub fn run(command: KeysCommand) -> ExitCode {
    match command {
        KeysCommand::New { name } => {
            let key = match new_key() {
                Ok(key) => key,
                Err(e) => {
                    eprintln!("copilot: no randomness from the operating system: {e}");
                    return ExitCode::FAILURE;
                }
            };
            println!("key (give it to the client; it is not stored anywhere): {key}");
            println!();
            println!("configuration entry:");
            println!("[[auth.keys]]\nname = {name:?}\nhash = \"{}\"", KeyHash::of(&key));
        }
        KeysCommand::Hash => {
            let mut key = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut key) {
                eprintln!("copilot: cannot read the key from standard input: {e}");
                return ExitCode::FAILURE;
            }
            let key = key.trim();
            if key.is_empty() {
                eprintln!("copilot: no key on standard input");
                return ExitCode::from(2);
            }
            println!("{}", KeyHash::of(key));
        }
    }
    ExitCode::SUCCESS
}
