"""SRC strings: every part checked when a job is added, shown without secrets, and scrubbed from messages."""
import pytest

from sources import SourceError, describe_source, parse_source, postgresql_uri, shown_source, source_secrets


@pytest.mark.parametrize("source, problem", [
    ("postgresql://u@db:5432x/app", "the port must be a number from 1 to 65535"),
    ("postgresql://u@db:0/app", "the port must be a number from 1 to 65535"),
    ("mysql://u@db:65536/app", "the port must be a number from 1 to 65535"),
    ("postgresql://u@db:/app", "the port must be a number from 1 to 65535"),
    ("postgresql://u@bad_host!/app", "the host must be a host name or an IP address"),
    ("postgresql://u@[not-ipv6]/app", "an IPv6 address goes in brackets"),
    ("postgresql://u@[::1/app", "an IPv6 address goes in brackets"),
    ("postgresql://u@:5432/app", "needs a host"),
    ("mysql://u@db:3306/", "needs a database"),
    ("mysql://u@db:3306/app/", "a '/' in it is written %2F"),
    ("postgresql://u@db/" + "d" * 64, "at most 63 bytes"),
    ("postgresql://:pw@db/app", "a user name goes before the '@'"),
    ("postgresql://u@db/app?sslmode=requir", "sslmode is one of disable, allow, prefer, require"),
    ("postgresql://u@db/app?sslrootcert=ca.pem", "sslrootcert needs an absolute path"),
    ("postgresql://u@db/app?connect_timeout=soon", "connect_timeout is a whole number"),
    ("postgresql://u@db/app?sslmode=", "the option sslmode needs a value"),
    ("postgresql://u@db/app?sslmode=require&sslmode=disable", "the option sslmode is given twice"),
    ("mysql://u@db/app?ssl-mode=SOMETIMES", "ssl-mode is one of DISABLED, PREFERRED, REQUIRED"),
    ("mysql://u@db/app?ssl-ca=relative/ca.pem", "ssl-ca needs an absolute path"),
    ("mysql://u:pw@db/app?password=other", "give the password once"),
    ("sqlite://relative.db", "needs an absolute path"),
    ("files:relative", "write it as files:///abs/dir"),
    ("files:///srv/a?b", "a '?' in the path is written %3F"),
    ("files:///srv/%00x", "NUL"),
    ("files:///srv/\nx", "control characters"),
    ("wpsec://example.com/wp-admin", "needs a registered website's domain and nothing else"),
    ("ftp://example.com/x", "unknown source 'ftp'"),
    ("command:  ", "needs a shell command"),
])
def test_each_part_of_a_source_is_checked_with_a_clear_message(source, problem):
    with pytest.raises(SourceError, match=problem.replace("[", r"\[").replace("?", r"\?")):
        parse_source(source)


def test_an_unknown_option_is_refused_with_the_known_ones_listed():
    with pytest.raises(SourceError) as postgresql:
        parse_source("postgresql://u@db/app?ssl_mode=require")
    assert "unknown option 'ssl_mode'" in str(postgresql.value) and "sslmode" in str(postgresql.value)
    with pytest.raises(SourceError) as mysql:
        parse_source("mysql://u@db/app?sslmode=required")
    assert "unknown option 'sslmode'" in str(mysql.value)
    assert "ssl-ca, ssl-capath, ssl-cert" in str(mysql.value) and "charset" in str(mysql.value)


# Each password holds a character that must be percent-encoded in a URL; as
# written, URL parsers cut the source elsewhere and see no password at all.
AMBIGUOUS = ["postgresql://user:Xq7/zK9v@db.internal/app", "postgresql://user:Xq7?zK9v@db.internal/app",
             "mysql://user:Xq7#zK9v@db.internal/app", "mysql://user:Xq7@zK9v@db.internal/app",
             "postgresql://user:Xq7%zK9v@db.internal/app"]


@pytest.mark.parametrize("source", AMBIGUOUS)
def test_ambiguous_credentials_are_refused_with_how_to_percent_encode_them(source):
    with pytest.raises(SourceError) as refused:
        parse_source(source)
    message = str(refused.value)
    assert "%25" in message or ("percent-encode" in message and "'/' as %2F" in message and "'@' as %40" in message)
    assert "Xq7" not in message and "zK9v" not in message


def test_a_percent_encoded_password_is_decoded_and_never_shown():
    source = parse_source("postgresql://user:Xq7%2FzK9v%40@db.internal:6432/app")
    assert (source.user, source.password, source.host, source.port, source.database) == (
        "user", "Xq7/zK9v@", "db.internal", 6432, "app")
    assert shown_source("postgresql://user:Xq7%2FzK9v%40@db.internal:6432/app") == \
        "postgresql://user:***@db.internal:6432/app"


def test_libpq_options_are_kept_and_the_password_left_out_of_pg_dumps_uri():
    source = parse_source("postgresql://backup:pw@[::1]:5433/my%20db?sslmode=verify-full"
                          "&sslrootcert=/etc/ssl/ca.pem&application_name=nightly")
    assert source.options == (("sslmode", "verify-full"), ("sslrootcert", "/etc/ssl/ca.pem"),
                              ("application_name", "nightly"))
    assert postgresql_uri(source) == ("postgresql://backup@[::1]:5433/my%20db?sslmode=verify-full"
                                      "&sslrootcert=/etc/ssl/ca.pem&application_name=nightly")


def test_a_password_given_as_an_option_is_the_sources_password():
    source = parse_source("mysql://backup@db/app?ssl_ca=/etc/ca.pem&password=Xq7zK9v")
    assert source.password == "Xq7zK9v"
    assert source.options == (("ssl-ca", "/etc/ca.pem"),)


def test_a_wpsec_domain_is_normalised_in_one_place():
    assert parse_source("wpsec://Example.COM./").domain == "example.com"


@pytest.mark.parametrize("source, shown", [
    ("postgresql://user:Xq7zK9v@db:5432/app", "postgresql://user:***@db:5432/app"),
    ("postgresql://user@db/app?sslmode=require&password=Xq7zK9v&sslpassword=Xq8zK9w&sslkey=/keys/Xq9.key",
     "postgresql://user@db/app?sslmode=require&password=***&sslpassword=***&sslkey=***"),
    ("mysql://user@db/app?ssl_key=/keys/Xq9.key&charset=utf8mb4", "mysql://user@db/app?ssl_key=***&charset=utf8mb4"),
    ("files:///srv/site", "files:///srv/site"),
    ("command:PGPASSWORD=Xq7zK9v pg_dumpall", "command"),
])
def test_the_shown_source_holds_no_secret(source, shown):
    assert shown_source(source) == shown


# Rows stored before sources were checked: each still shows, without its secrets.
STORED_BEFORE_VALIDATION = [
    ("postgresql://user:Xq7zK9v@db:5432x/app", "postgresql", "postgresql://***@db:5432x/app"),
    ("postgresql://user:Xq7/zK9v@db.internal/app", "postgresql", "postgresql://***@db.internal/app"),
    ("mysql://user:Xq7zK9v@db/app?password=Xq8zK9w&bogus=1", "mysql", "mysql://***@db/app?…"),
    ("postgresql://db/app?sslpassword=Xq7zK9v&nonsense=1", "postgresql", "postgresql://db/app?…"),
    ("ftp://user:Xq7zK9v@host/x", "unknown", "ftp://***@host/x"),
    ("nonsense", "unknown", "nonsense:…"),
    ("command:", "command", "command"),
]


@pytest.mark.parametrize("source, kind, shown", STORED_BEFORE_VALIDATION)
def test_a_source_that_no_longer_parses_is_still_described_without_its_secrets(source, kind, shown):
    assert describe_source(source) == {"sourceKind": kind, "source": shown}


@pytest.mark.parametrize("source, secrets", [
    ("postgresql://user:Xq7%2FzK9v@db/app", {"Xq7%2FzK9v", "Xq7/zK9v"}),
    ("postgresql://user@db/app?password=Xq7zK9v&sslpassword=Xq8zK9w&sslkey=/keys/Xq9.key&sslmode=require",
     {"Xq7zK9v", "Xq8zK9w", "/keys/Xq9.key", "%2Fkeys%2FXq9.key"}),
    ("postgresql://user:Xq7/zK9v@db.internal/app", {"Xq7/zK9v", "Xq7%2FzK9v"}),
    ("mysql://user:Xq7zK9v@db:3306x/app?password=Xq8zK9w", {"Xq7zK9v", "Xq8zK9w"}),
])
def test_the_secrets_of_a_source_are_every_spelling_of_its_credentials(source, secrets):
    found = source_secrets(source)
    assert secrets <= set(found)
    assert found == sorted(found, key=len, reverse=True)  # a longer secret is scrubbed before its substrings
    assert not {"user", "db", "app", "sslmode", "require"} & set(found)
