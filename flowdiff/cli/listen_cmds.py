"""`flowdiff listen`: receive NetFlow v5/v9 and IPFIX export into a rotated spool (see flowdiff/listen.py)."""

from __future__ import annotations

import signal
import sys

import click

from flowdiff.cli.common import config_option, handle_errors, load


def register(main: click.Group) -> None:
    main.add_command(listen_cmd)


@click.command("listen")
@click.argument("addresses", nargs=-1)
@click.option(
    "--syslog",
    "syslog",
    multiple=True,
    metavar="ADDR:PORT",
    help="Receive syslog instead (UDP; tcp://ADDR:PORT for TCP with RFC 6587 framing; repeatable) "
    "into *.syslog spool files that collect reads as logs.",
)
@config_option
@click.option(
    "--spool",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory of the spool files (default: config key `spool`, the folder `flowdiff run` reads).",
)
@click.option(
    "--rotate",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Start a new spool file every this many seconds (UTC multiples, like tcpdump -G).",
)
@click.option(
    "--rcvbuf",
    type=click.IntRange(min=1024),
    default=None,
    help="Socket receive buffer in bytes (SO_RCVBUF; default 32 MiB, forced past net.core.rmem_max where allowed).",
)
@handle_errors
def listen_cmd(addresses, syslog, config_path, spool, rotate, rcvbuf) -> None:
    """Receive NetFlow v5, v9 and IPFIX on ADDR:PORT (UDP; several allowed) into a spool of pcap files.

    Each datagram is kept as it arrived, in files named by UTC time (`*.flows.pcap`), rotated every
    --rotate seconds and closed properly on SIGTERM/SIGINT; `collect` decodes them as flow records.
    Prints one summary line when stopped, with the datagrams the kernel dropped (buffer full).
    """
    from flowdiff.listen import ListenError, listen

    if bool(addresses) == bool(syslog):
        raise click.UsageError(
            "give flow export ADDR:PORT ... or --syslog ADDR:PORT (one kind per listen process)"
        )

    if spool is None:
        spool = load(config_path).spool
        if spool is None:
            raise ListenError("no spool folder: give --spool DIR or set `spool` in the config")

    def wire(listener) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: listener.stop())
        click.echo(
            "listen: receiving on " + ", ".join(f"{h}:{p}" for h, p in listener.addresses) + f" into {spool}",
            err=True,
        )

    if syslog:
        from flowdiff.syslog_listen import listen_syslog

        result = listen_syslog(syslog, spool, rotate=rotate, rcvbuf=rcvbuf, ready=wire)
    else:
        result = listen(addresses, spool, rotate=rotate, rcvbuf=rcvbuf, ready=wire)
    click.echo(result.summary())
    sys.exit(result.exit_code)
