"""Minimal bencode (BEP 3) encoder/decoder for the harness's own tracker and
DHT node. Strings come back as bytes; dict keys are bytes."""


def encode(obj) -> bytes:
    out = []

    def enc(o):
        if isinstance(o, bool):
            o = int(o)
        if isinstance(o, int):
            out.append(b"i%de" % o)
        elif isinstance(o, (bytes, bytearray)):
            out.append(b"%d:" % len(o))
            out.append(bytes(o))
        elif isinstance(o, str):
            enc(o.encode())
        elif isinstance(o, (list, tuple)):
            out.append(b"l")
            for x in o:
                enc(x)
            out.append(b"e")
        elif isinstance(o, dict):
            out.append(b"d")
            items = [(k.encode() if isinstance(k, str) else k, v) for k, v in o.items()]
            for k, v in sorted(items):
                enc(k)
                enc(v)
            out.append(b"e")
        else:
            raise TypeError("cannot bencode %r" % type(o))

    enc(obj)
    return b"".join(out)


class DecodeError(ValueError):
    pass


def decode(data: bytes):
    """Decode one bencoded value; trailing bytes are an error."""
    val, pos = _dec(data, 0, 0)
    if pos != len(data):
        raise DecodeError("trailing data")
    return val


def _dec(d, i, depth):
    if depth > 32 or i >= len(d):
        raise DecodeError("truncated or too deep")
    c = d[i:i + 1]
    if c == b"i":
        j = d.index(b"e", i)
        return int(d[i + 1:j]), j + 1
    if c == b"l":
        i += 1
        lst = []
        while d[i:i + 1] != b"e":
            v, i = _dec(d, i, depth + 1)
            lst.append(v)
        return lst, i + 1
    if c == b"d":
        i += 1
        dct = {}
        while d[i:i + 1] != b"e":
            k, i = _dec(d, i, depth + 1)
            if not isinstance(k, bytes):
                raise DecodeError("non-string key")
            v, i = _dec(d, i, depth + 1)
            dct[k] = v
        return dct, i + 1
    if c.isdigit():
        j = d.index(b":", i)
        n = int(d[i:j])
        if n < 0 or j + 1 + n > len(d):
            raise DecodeError("bad string length")
        return d[j + 1:j + 1 + n], j + 1 + n
    raise DecodeError("bad token at %d" % i)
