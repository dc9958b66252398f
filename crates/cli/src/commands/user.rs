//! `opssentinal user create|update|list|sessions|contact`, and the original flag interface
//! `opssentinal --user NAME --email E --password P --role R [--update]`.

use std::io::BufRead;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use common::auth::Role;
use common::config::DatabaseConfig;
use common::fields::field;
use query_api::users::body::{NewUser, User, UserChange};
use query_api::users::service;

use crate::output::Output;
use crate::required;

pub const LEGACY_HELP: &str = "Create or update a user without a subcommand:
  opssentinal --user \"Jane Doe\" --email jane@example.com --password '…' --role admin
  opssentinal --email jane@example.com --role responder --update";

/// The original interface, kept for existing scripts.
#[derive(Debug, Args)]
pub struct LegacyUserArgs {
    /// Full name of the user to create (or the new name with --update).
    #[arg(long = "user")]
    user: Option<String>,
    /// Email address (identifies the user for --update).
    #[arg(long)]
    email: Option<String>,
    /// Password (prefer --password-stdin, which keeps it out of shell history).
    #[arg(long)]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Role: admin, responder or user.
    #[arg(long, value_parser = parse_role)]
    role: Option<Role>,
    /// Update the existing user with this email instead of creating one.
    #[arg(long)]
    update: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    #[command(
        after_help = "Example:\n  opssentinal user create --name \"Jane Doe\" --email jane@example.com --role responder --password-stdin"
    )]
    Create {
        #[arg(long, visible_alias = "user")]
        name: String,
        #[arg(long)]
        email: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[arg(long, value_parser = parse_role, default_value = "user")]
        role: Role,
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// Change a user's name, password or role (any subset), found by email.
    #[command(after_help = "Example:\n  opssentinal user update --email jane@example.com --role admin")]
    Update {
        #[arg(long)]
        email: String,
        #[arg(long, visible_alias = "user")]
        name: Option<String>,
        #[command(flatten)]
        password: PasswordArgs,
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// List users.
    #[command(after_help = "Example:\n  opssentinal user list --output json")]
    List {
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// The web console's sessions: list them, or revoke every session of a person (their next
    /// request is refused and they sign in again).
    #[command(subcommand)]
    Sessions(SessionCommand),
    /// A user's contact methods, where escalation steps notify them. Unlike the other user
    /// commands this talks to the HTTP API, not PostgreSQL (client: OPSSENTINAL_URL,
    /// OPSSENTINAL_API_KEY; adding needs `users:write`, or the user's own key).
    #[command(subcommand)]
    Contact(super::contact::ContactCommand),
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List live console sessions, newest first.
    #[command(after_help = "Example:\n  opssentinal user sessions list --email jane@example.com")]
    List {
        /// Only this person's sessions.
        #[arg(long)]
        email: Option<String>,
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// Revoke every live console session of a person.
    #[command(after_help = "Example:\n  opssentinal user sessions revoke --email jane@example.com")]
    Revoke {
        #[arg(long)]
        email: String,
        #[command(flatten)]
        database: DatabaseConfig,
    },
}

#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// Password (prefer --password-stdin).
    #[arg(long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordArgs {
    fn resolve(self) -> anyhow::Result<Option<String>> {
        resolve_password(self.password, self.password_stdin)
    }
}

fn resolve_password(password: Option<String>, stdin: bool) -> anyhow::Result<Option<String>> {
    if !stdin {
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        bail!("no password on standard input");
    }
    Ok(Some(line))
}

fn parse_role(value: &str) -> Result<Role, String> {
    Role::parse(value).ok_or_else(|| format!("unknown role {value:?}: use admin, responder or user"))
}

pub async fn run(command: UserCommand, output: Output) -> anyhow::Result<()> {
    match command {
        UserCommand::Create { name, email, password, role, database } => {
            let password = required(password.resolve()?, "a password is required: --password or --password-stdin")?;
            let pool = super::connect(&database).await?;
            let user = service::create(&pool, &NewUser::parse(&name, &email, &password, role)?).await?;
            print_user(output, &user, "created")
        }
        UserCommand::Update { email, name, password, role, database } => {
            let password = password.resolve()?;
            let pool = super::connect(&database).await?;
            let user = service::update(&pool, &email, &change(name.as_deref(), password.as_deref(), role)?).await?;
            print_user(output, &user, "updated")
        }
        UserCommand::List { database } => {
            let pool = super::connect(&database).await?;
            let users = service::list(&pool).await?;
            let rows =
                users.iter().map(|u| vec![u.id.clone(), u.name.clone(), u.email.clone(), u.role.clone()]).collect();
            output.list(&users, &["ID", "NAME", "EMAIL", "ROLE"], rows)
        }
        UserCommand::Contact(command) => super::contact::run(command, output).await,
        UserCommand::Sessions(SessionCommand::List { email, database }) => {
            let pool = super::connect(&database).await?;
            let sessions = query_api::console::service::list(&pool, email.as_deref()).await?;
            let rows = sessions
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        s.email.clone(),
                        s.created_at.clone(),
                        s.last_seen_at.clone(),
                        s.user_agent.clone(),
                    ]
                })
                .collect();
            output.list(&sessions, &["ID", "EMAIL", "SIGNED IN", "LAST SEEN", "BROWSER"], rows)
        }
        UserCommand::Sessions(SessionCommand::Revoke { email, database }) => {
            let pool = super::connect(&database).await?;
            let revoked = query_api::console::service::revoke(&pool, &email).await?;
            output.record(
                &serde_json::json!({"email": email, "revoked": revoked}),
                &[("revoked sessions", revoked.to_string())],
            )
        }
    }
}

pub async fn run_legacy(args: LegacyUserArgs, database: &DatabaseConfig, output: Output) -> anyhow::Result<()> {
    let email =
        required(args.email, "nothing to do: give a subcommand (see --help) or --user/--email/--password/--role")?;
    let password = resolve_password(args.password, args.password_stdin)?;
    let user = if args.update {
        let pool = super::connect(database).await?;
        service::update(&pool, &email, &change(args.user.as_deref(), password.as_deref(), args.role)?).await?
    } else {
        let name = required(args.user, "--user NAME is required to create a user (or add --update)")?;
        let password = required(password, "--password (or --password-stdin) is required to create a user")?;
        let role = required(args.role, "--role is required to create a user: admin, responder or user")?;
        let pool = super::connect(database).await?;
        service::create(&pool, &NewUser::parse(&name, &email, &password, role)?).await?
    };
    print_user(output, &user, if args.update { "updated" } else { "created" })
}

/// A change from the flags given, naming the flag's field when a value does not fit.
fn change(name: Option<&str>, password: Option<&str>, role: Option<Role>) -> anyhow::Result<UserChange> {
    Ok(UserChange {
        name: name.map(|n| field("name", n)).transpose()?,
        password: password.map(|p| field("password", p)).transpose()?,
        role,
    })
}

fn print_user(output: Output, user: &User, verb: &str) -> anyhow::Result<()> {
    if output == Output::Table {
        println!("user {verb}");
    }
    output.record(
        user,
        &[
            ("id", user.id.clone()),
            ("name", user.name.clone()),
            ("email", user.email.clone()),
            ("role", user.role.clone()),
        ],
    )
}
