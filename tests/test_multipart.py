"""serve's short path for plain multipart uploads: it reads what clients send, and leaves the rest alone."""
import httpx

from pipeline.faces.multipart import boundary_of, files_of


def _encoded(files, data=None):
    """A body and Content-Type as httpx (like requests and browsers) writes them."""
    request = httpx.Request("POST", "http://x/predict", files=files, data=data)
    return request.headers["content-type"].encode(), request.read()


def test_reads_what_a_client_library_sends():
    png = b"\x89PNG\r\n\x1a\n\r\n--not-the-boundary\r\n\x00\xff"
    ctype, body = _encoded([("files", ("a.png", png, "image/png")), ("files", ("b c.jpg", b"", "image/jpeg"))])
    assert files_of(ctype, body) == [("a.png", png), ("b c.jpg", b"")]


def test_a_curl_style_body_with_a_quoted_boundary():
    body = (b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="d.png"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\nDATA\r\n--xyz--\r\n")
    assert boundary_of(b'multipart/form-data; boundary="xyz"') == b"xyz"
    assert files_of(b'multipart/form-data; boundary="xyz"', body) == [("d.png", b"DATA")]
    assert files_of(b"multipart/form-data; boundary=xyz", body) == [("d.png", b"DATA")]


def test_a_name_in_utf8_as_rfc_5987_writes_it():
    body = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename*=UTF-8''zahl_%C3%BC%20a.png\r\n"
            b"\r\nDATA\r\n--b--\r\n")
    assert files_of(b"multipart/form-data; boundary=b", body) == [("zahl_\u00fc a.png", b"DATA")]


def test_anything_else_is_left_to_the_full_parser():
    part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n\r\nDATA\r\n'
    ctype = b"multipart/form-data; boundary=b"
    cases = {
        "not multipart": (b"application/json", part + b"--b--\r\n"),
        "no boundary": (b"multipart/form-data", part + b"--b--\r\n"),
        "cut short": (ctype, part[:-8]),
        "no closing delimiter": (ctype, part),
        "a preamble": (ctype, b"hello\r\n" + part + b"--b--\r\n"),
        "another field": (ctype, b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n' + part + b"--b--\r\n"),
        "a file of another field": (ctype, part.replace(b'name="files"', b'name="image"') + b"--b--\r\n"),
        "another encoding": (ctype, part.replace(b'filename="x.png"', b"filename*=ISO-8859-1''x%FC.png") + b"--b--\r\n"),
        "an escaped quote": (ctype, part.replace(b'filename="x.png"', b'filename="x\\".png"') + b"--b--\r\n"),
        "a transfer encoding": (ctype, part.replace(b"\r\n\r\n", b"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
                                + b"--b--\r\n"),
        "no file name": (ctype, part.replace(b'; filename="x.png"', b"") + b"--b--\r\n"),
        "an empty file name": (ctype, part.replace(b'filename="x.png"', b'filename=""') + b"--b--\r\n"),
        "junk after a delimiter": (ctype, part + b"--bjunk\r\n--b--\r\n"),
    }
    assert files_of(ctype, part + b"--b--\r\n") == [("x.png", b"DATA")]  # the plain body itself is read
    for what, (content_type, body) in cases.items():
        assert files_of(content_type, body) is None, what
