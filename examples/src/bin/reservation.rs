//! `reservation`: hold, inspect and book seats on Flight objects.
//!
//! ```text
//! reservation --connect ADDR --ca DIR/tls/ca.pem --token-file DIR/tls/token hold FLIGHT SEAT USER [--for-secs N]
//! reservation ... status FLIGHT SEAT
//! reservation ... confirm FLIGHT SEAT USER
//! ```
//!
//! `hold` prints `held seat SEAT on FLIGHT for USER until TIME` (UTC, RFC 3339),
//! `status` prints `free`, `held by USER` or `confirmed by USER`, and `confirm` prints
//! `confirmed`. Failures print `error: ...` on stderr and exit with status 1.

use clap::{Parser, Subcommand};
use durable_examples::cli::{fail_call, rfc3339, ConnectArgs};
use durable_examples::reservation::{Flight, SeatStatus};

#[derive(Parser, Debug)]
#[command(about = "Hold and book seats on Flight objects on a durable host")]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Hold SEAT on FLIGHT for USER for N seconds (holding again extends the hold).
    Hold {
        flight: String,
        seat: u32,
        user: String,
        /// How long the hold lasts, in seconds.
        #[arg(long, default_value_t = 600)]
        for_secs: u64,
    },
    /// Print whether SEAT on FLIGHT is free, held or confirmed, and by whom.
    Status { flight: String, seat: u32 },
    /// Book SEAT on FLIGHT for USER, who must hold it.
    Confirm {
        flight: String,
        seat: u32,
        user: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let client = cli.connect.client().await;
    match cli.command {
        Command::Hold {
            flight,
            seat,
            user,
            for_secs,
        } => match client
            .get::<Flight>(&flight)
            .hold(seat, user, for_secs)
            .await
        {
            Ok(hold) => println!(
                "held seat {} on {flight} for {} until {}",
                hold.seat,
                hold.user,
                rfc3339(hold.until)
            ),
            Err(e) => fail_call(e),
        },
        Command::Status { flight, seat } => {
            match client.get::<Flight>(&flight).status(seat).await {
                Ok(SeatStatus::Free) => println!("free"),
                Ok(SeatStatus::Held { user, .. }) => println!("held by {user}"),
                Ok(SeatStatus::Confirmed { user }) => println!("confirmed by {user}"),
                Err(e) => fail_call(e),
            }
        }
        Command::Confirm { flight, seat, user } => {
            match client.get::<Flight>(&flight).confirm(seat, user).await {
                Ok(()) => println!("confirmed"),
                Err(e) => fail_call(e),
            }
        }
    }
}
