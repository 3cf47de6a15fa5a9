"""Reports: subject, both bodies, row order, flood control, hostile strings, templates, archive."""

from __future__ import annotations

import email
import email.policy
import io
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from fixtures_mail import make_result

from flowdiff.config import Config, MailConfig
from flowdiff.deliver import deliver
from flowdiff.errors import ReportError
from flowdiff.report import (
    REPORT_EML,
    REPORT_HTML,
    REPORT_META,
    REPORT_TEXT,
    archive_report,
    human_bytes,
    message_id_for,
    one_line,
    render_report,
)


def cfg(tmp_path: Path, **kw) -> Config:
    return Config(reports=tmp_path / "reports", sensor="sensor1", **kw)


def expected_subject(result, sensor: str) -> str:
    parts = sorted(result.counts().items(), key=lambda kv: (-kv[1], kv[0]))
    n = result.total
    return f"[flowdiff {sensor}] {n} new row{'s' if n != 1 else ''}: " + ", ".join(
        f"{t} {c}" for t, c in parts
    )


def test_subject_counts_rows_per_table_largest_first(tmp_path):
    result = make_result(services=2, hosts=1)
    r = render_report(result, cfg(tmp_path))
    assert r.subject == expected_subject(result, "sensor1")
    assert r.subject.startswith("[flowdiff sensor1] 3 new rows: services 2, hosts 1")
    one = make_result(services=1, hosts=0)
    assert render_report(one, cfg(tmp_path)).subject == "[flowdiff sensor1] 1 new row: services 1"


def test_mail_sensor_overrides_the_sensor_of_the_result(tmp_path):
    r = render_report(make_result(sensor="probe-a"), cfg(tmp_path, mail=MailConfig(sensor="edge-1")))
    assert r.subject.startswith("[flowdiff edge-1] ")
    assert r.sensor == "edge-1"


def test_bodies_show_every_row_sorted_by_bytes_with_exact_commands(tmp_path):
    result = make_result(services=4, hosts=2)
    r = render_report(result, cfg(tmp_path))
    for table, df in result.rows.items():
        ordered = df.sort_values("bytes", ascending=False)
        for body in (r.text, r.html):
            positions = [
                body.find(str(cmd).replace("'", "&#39;") if body is r.html else cmd)
                for cmd in ordered["accept_cmd"]
            ]
            assert all(p >= 0 for p in positions), (table, positions)
            assert positions == sorted(positions), f"{table} rows are not sorted by bytes"
        for _, row in ordered.iterrows():
            assert row["deny_cmd"] in r.text
            assert row["reason"] in r.text
            assert human_bytes(int(row["bytes"])) in r.text
            assert f"{int(row['packets']):,}" in r.text
            if row["neighbour"]:
                assert row["neighbour"] in r.text and row["neighbour"] in r.html
    assert not r.attachments


def test_footer_has_baseline_versions_and_time_span(tmp_path):
    result = make_result()
    r = render_report(result, cfg(tmp_path))
    for body in (r.text, r.html):
        for table, version in result.baseline_versions.items():
            assert f"{table} {version}" in body
        assert "2026-11-30 01:00:00Z" in body and "2026-11-30 01:15:00Z" in body
        assert result.report_id in body


def test_flood_control_caps_rows_and_attaches_all_of_them_as_csv(tmp_path):
    result = make_result(services=40, hosts=3)
    r = render_report(result, cfg(tmp_path, max_rows=5))
    services = result.rows["services"].sort_values("bytes", ascending=False)
    shown, hidden = services.iloc[:5], services.iloc[5:]
    for cmd in shown["accept_cmd"]:
        assert cmd in r.text
    for cmd in hidden["accept_cmd"]:
        assert cmd not in r.text
    assert f"and {len(hidden)} more rows ({int(hidden['packets'].sum()):,} packets" in r.text
    largest_hidden = hidden.iloc[0]
    assert f"client={largest_hidden['client']} " in r.text  # named in the summary
    # one CSV, for the table that overflowed, holding every row of it
    assert [a[0] for a in r.attachments] == [f"services-{result.report_id}.csv.gz"]
    name, data, mime = r.attachments[0]
    assert mime == "application/gzip" and name in r.text and name in r.html
    assert f"all {len(services)} rows are in the attachment {name}" in r.text
    assert r.attached_rows == {"services": len(services)}
    csv = pd.read_csv(io.BytesIO(data), compression="gzip")
    assert len(csv) == len(services)
    assert sorted(csv["bytes"]) == sorted(int(b) for b in services["bytes"])
    assert set(csv["accept_cmd"]) == set(services["accept_cmd"])
    # hosts fitted: no CSV for it, all three rows in the body
    assert all(cmd in r.text for cmd in result.rows["hosts"]["accept_cmd"])


def test_html_is_escaped_and_subject_is_one_line(tmp_path):
    result = make_result(client="<script>alert(1)</script>", sensor="evil\r\nBcc: victim@example.test")
    r = render_report(result, cfg(tmp_path))
    assert "<script>" not in r.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.html
    assert "<script>alert(1)</script>" in r.text  # the plain part shows the label as it is
    assert "\r" not in r.subject and "\n" not in r.subject
    assert r.subject.startswith("[flowdiff evil Bcc: victim@example.test] ")
    assert "\n" not in r.message_id and "\r" not in r.message_id


def test_message_id_is_stable_per_report_and_sensor(tmp_path):
    a = render_report(make_result("R-1"), cfg(tmp_path))
    b = render_report(make_result("R-1"), cfg(tmp_path))
    c = render_report(make_result("R-2"), cfg(tmp_path))
    d = render_report(make_result("R-1", sensor="other"), cfg(tmp_path))
    assert a.message_id == b.message_id == message_id_for("R-1", "sensor1")
    assert len({a.message_id, c.message_id, d.message_id}) == 3
    assert a.message_id.startswith("<") and a.message_id.endswith(">") and a.message_id.count("@") == 1


def test_nothing_new_is_not_a_report(tmp_path):
    empty = replace(make_result(services=0, hosts=0), report_id=None)
    with pytest.raises(ReportError, match="nothing new"):
        render_report(empty, cfg(tmp_path))


def test_user_template_folder_overrides_packaged_templates(tmp_path):
    user = tmp_path / "tpl"
    user.mkdir()
    (user / "subject.txt").write_text("ALERT {{ sensor }} {{ total }}", encoding="utf-8")
    r = render_report(make_result(), cfg(tmp_path, templates=user))
    assert r.subject == "ALERT sensor1 3"
    assert "accept:" in r.text  # the other templates still come from the package


def test_undefined_variable_in_a_template_is_an_error(tmp_path):
    user = tmp_path / "tpl"
    user.mkdir()
    (user / "report.html").write_text("<p>{{ sensr }}</p>", encoding="utf-8")
    with pytest.raises(ReportError, match="sensr"):
        render_report(make_result(), cfg(tmp_path, templates=user))


def test_template_syntax_error_names_the_template(tmp_path):
    user = tmp_path / "tpl"
    user.mkdir()
    (user / "report.txt").write_text("{% for x in %}", encoding="utf-8")
    with pytest.raises(ReportError, match="report.txt"):
        render_report(make_result(), cfg(tmp_path, templates=user))


def test_archive_writes_every_file_atomically_without_mail(tmp_path):
    result = make_result(services=12)
    config = cfg(tmp_path, max_rows=3)
    assert not config.mail.enabled
    r = render_report(result, config)
    d = archive_report(r, result, config)
    assert d == tmp_path / "reports" / result.report_id
    assert (d / REPORT_TEXT).read_text(encoding="utf-8") == r.text
    assert (d / REPORT_HTML).read_text(encoding="utf-8") == r.html
    assert r.attachments[0][0].endswith(".csv.gz")
    assert (d / r.attachments[0][0]).read_bytes() == r.attachments[0][1]
    meta = json.loads((d / REPORT_META).read_text(encoding="utf-8"))
    assert meta["message_id"] == r.message_id and meta["total"] == result.total
    assert meta["counts"] == result.counts()
    assert not (d / REPORT_EML).exists()  # the message is built by flowdiff.deliver, not by report
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_deliver_archives_the_message_too_without_mail(tmp_path):
    result = make_result(services=12)
    config = cfg(tmp_path, max_rows=3)
    d = deliver(result, config)
    assert d.report_dir == tmp_path / "reports" / result.report_id and d.message_id is None
    assert (d.report_dir / REPORT_TEXT).read_text(encoding="utf-8") == d.rendered.text
    eml = email.message_from_bytes((d.report_dir / REPORT_EML).read_bytes(), policy=email.policy.default)
    assert eml["Message-ID"] == d.rendered.message_id and eml["Subject"] == d.rendered.subject
    assert d.message_bytes == (d.report_dir / REPORT_EML).stat().st_size
    assert not (tmp_path / "reports" / "outbox").exists()  # no [mail]: nothing queued


def test_report_does_not_import_mail():
    """report renders (jinja2), mail sends (SMTP): neither imports the other (issue 9 item 2)."""
    import ast

    import flowdiff.mail
    import flowdiff.report

    for module, other in ((flowdiff.report, "flowdiff.mail"), (flowdiff.mail, "jinja2")):
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m == other or m.startswith(other + ".") for m in imported), (module.__name__, other)


def test_archive_refuses_a_report_id_that_escapes_the_folder(tmp_path):
    result = make_result("../../etc")
    r = render_report(result, cfg(tmp_path))
    with pytest.raises(ReportError, match="not a report id"):
        archive_report(r, result, cfg(tmp_path))


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_234_567, "1.2 MB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_one_line_folds_every_line_break():
    assert one_line("a\r\nb\u2028c\x00d\x85e") == "a b c d e"
