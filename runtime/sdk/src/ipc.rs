//! A small Arrow IPC stream reader for the result tables the host sends:
//! one schema message and record batches whose columns are Int64, Float64
//! or Utf8 (the host normalizes every released column to one of these).
//! Uncompressed, little-endian, as arrow-rs writes it. Every read is
//! bounds-checked; malformed input gives an error, never a panic.

/// Column values.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// 64-bit integers (counts, sums, integer group keys).
    Int64(Vec<Option<i64>>),
    /// 64-bit floats (averages, float group keys).
    Float64(Vec<Option<f64>>),
    /// Text (string group keys).
    Utf8(Vec<Option<String>>),
}

impl Values {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::Int64(v) => v.len(),
            Values::Float64(v) => v.len(),
            Values::Utf8(v) => v.len(),
        }
    }
    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A named column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Column name as in the query's SELECT list.
    pub name: String,
    /// Values.
    pub values: Values,
}

/// A result table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    /// Columns in SELECT order.
    pub columns: Vec<Column>,
}

impl Table {
    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.columns.first().map(|c| c.values.len()).unwrap_or(0)
    }
    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
    /// An integer cell (floats are truncated).
    pub fn i64(&self, name: &str, row: usize) -> Option<i64> {
        match &self.column(name)?.values {
            Values::Int64(v) => v.get(row).cloned().flatten(),
            Values::Float64(v) => v.get(row).cloned().flatten().map(|x| x as i64),
            Values::Utf8(_) => None,
        }
    }
    /// A numeric cell as a float.
    pub fn f64(&self, name: &str, row: usize) -> Option<f64> {
        match &self.column(name)?.values {
            Values::Int64(v) => v.get(row).cloned().flatten().map(|x| x as f64),
            Values::Float64(v) => v.get(row).cloned().flatten(),
            Values::Utf8(_) => None,
        }
    }
    /// A text cell.
    pub fn str(&self, name: &str, row: usize) -> Option<&str> {
        match &self.column(name)?.values {
            Values::Utf8(v) => v.get(row).and_then(|s| s.as_deref()),
            _ => None,
        }
    }
    /// A cell rendered as text, whatever its type (empty for null).
    pub fn text(&self, name: &str, row: usize) -> String {
        match self.column(name).map(|c| &c.values) {
            Some(Values::Int64(v)) => v
                .get(row)
                .cloned()
                .flatten()
                .map(|x| x.to_string())
                .unwrap_or_default(),
            Some(Values::Float64(v)) => v
                .get(row)
                .cloned()
                .flatten()
                .map(|x| format!("{:.2}", x))
                .unwrap_or_default(),
            Some(Values::Utf8(v)) => v.get(row).cloned().flatten().unwrap_or_default(),
            None => String::new(),
        }
    }
}

type R<T> = Result<T, String>;

fn err<T>(m: &str) -> R<T> {
    Err(format!("malformed result: {}", m))
}

fn slice(b: &[u8], at: usize, len: usize) -> R<&[u8]> {
    match at.checked_add(len) {
        Some(end) if end <= b.len() => Ok(&b[at..end]),
        _ => err("read past the end"),
    }
}

fn u16_at(b: &[u8], at: usize) -> R<u16> {
    let s = slice(b, at, 2)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> R<u32> {
    let s = slice(b, at, 4)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn i32_at(b: &[u8], at: usize) -> R<i32> {
    Ok(u32_at(b, at)? as i32)
}

fn i64_at(b: &[u8], at: usize) -> R<i64> {
    let s = slice(b, at, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(i64::from_le_bytes(a))
}

/// A flatbuffer table.
#[derive(Clone, Copy)]
struct Tbl<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Tbl<'a> {
    fn root(buf: &'a [u8]) -> R<Tbl<'a>> {
        let pos = u32_at(buf, 0)? as usize;
        Ok(Tbl { buf, pos })
    }
    /// Offset of field `i` within the table, if present.
    fn field(&self, i: usize) -> R<Option<usize>> {
        let soff = i32_at(self.buf, self.pos)? as i64;
        let vt = self.pos as i64 - soff;
        if vt < 0 {
            return err("bad vtable");
        }
        let vt = vt as usize;
        let vt_len = u16_at(self.buf, vt)? as usize;
        let entry = 4 + 2 * i;
        if entry + 2 > vt_len {
            return Ok(None);
        }
        let off = u16_at(self.buf, vt + entry)? as usize;
        Ok(if off == 0 { None } else { Some(self.pos + off) })
    }
    fn u8(&self, i: usize, default: u8) -> R<u8> {
        match self.field(i)? {
            Some(p) => Ok(slice(self.buf, p, 1)?[0]),
            None => Ok(default),
        }
    }
    fn i16(&self, i: usize, default: i16) -> R<i16> {
        match self.field(i)? {
            Some(p) => Ok(u16_at(self.buf, p)? as i16),
            None => Ok(default),
        }
    }
    fn i32(&self, i: usize, default: i32) -> R<i32> {
        match self.field(i)? {
            Some(p) => i32_at(self.buf, p),
            None => Ok(default),
        }
    }
    fn i64(&self, i: usize, default: i64) -> R<i64> {
        match self.field(i)? {
            Some(p) => i64_at(self.buf, p),
            None => Ok(default),
        }
    }
    fn indirect(&self, p: usize) -> R<usize> {
        let off = u32_at(self.buf, p)? as usize;
        p.checked_add(off).map(Ok).unwrap_or_else(|| err("bad offset"))
    }
    fn table(&self, i: usize) -> R<Option<Tbl<'a>>> {
        match self.field(i)? {
            Some(p) => Ok(Some(Tbl {
                buf: self.buf,
                pos: self.indirect(p)?,
            })),
            None => Ok(None),
        }
    }
    fn string(&self, i: usize) -> R<String> {
        match self.field(i)? {
            Some(p) => {
                let at = self.indirect(p)?;
                let n = u32_at(self.buf, at)? as usize;
                let s = slice(self.buf, at + 4, n)?;
                String::from_utf8(s.to_vec()).or_else(|_| err("name is not UTF-8"))
            }
            None => Ok(String::new()),
        }
    }
    /// (start of elements, count) of a vector field.
    fn vector(&self, i: usize) -> R<(usize, usize)> {
        match self.field(i)? {
            Some(p) => {
                let at = self.indirect(p)?;
                Ok((at + 4, u32_at(self.buf, at)? as usize))
            }
            None => Ok((0, 0)),
        }
    }
    fn table_at(&self, p: usize) -> R<Tbl<'a>> {
        Ok(Tbl {
            buf: self.buf,
            pos: self.indirect(p)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int64,
    Float64,
    Utf8,
}

fn read_schema(msg: Tbl<'_>) -> R<Vec<(String, Kind)>> {
    let schema = match msg.table(2)? {
        Some(t) => t,
        None => return err("schema message without schema"),
    };
    let (start, n) = schema.vector(1)?;
    let mut fields = Vec::with_capacity(n);
    for k in 0..n {
        let f = schema.table_at(start + 4 * k)?;
        let name = f.string(0)?;
        let type_type = f.u8(2, 0)?;
        let kind = match type_type {
            2 => {
                let t = match f.table(3)? {
                    Some(t) => t,
                    None => return err("int type without parameters"),
                };
                if t.i32(0, 0)? != 64 {
                    return err("only 64-bit integers are expected");
                }
                Kind::Int64
            }
            3 => {
                let t = match f.table(3)? {
                    Some(t) => t,
                    None => return err("float type without parameters"),
                };
                if t.i16(0, 0)? != 2 {
                    return err("only double precision floats are expected");
                }
                Kind::Float64
            }
            5 => Kind::Utf8,
            _ => return err("unexpected column type"),
        };
        fields.push((name, kind));
    }
    Ok(fields)
}

fn validity(body: &[u8], off: usize, len: usize, rows: usize, nulls: i64) -> R<Vec<bool>> {
    if nulls == 0 || len == 0 {
        return Ok(vec![true; rows]);
    }
    let bits = slice(body, off, len)?;
    let mut v = Vec::with_capacity(rows);
    for i in 0..rows {
        let byte = match bits.get(i / 8) {
            Some(b) => *b,
            None => return err("validity bitmap too short"),
        };
        v.push(byte & (1 << (i % 8)) != 0);
    }
    Ok(v)
}

fn read_batch(msg: Tbl<'_>, body: &[u8], fields: &[(String, Kind)], out: &mut [Vec<Cell>]) -> R<()> {
    let rb = match msg.table(2)? {
        Some(t) => t,
        None => return err("record batch message without header"),
    };
    if rb.table(3)?.is_some() {
        return err("compressed batches are not supported");
    }
    let rows = rb.i64(0, 0)?;
    let rows = match usize::try_from(rows) {
        Ok(r) => r,
        Err(_) => return err("bad row count"),
    };
    let (nodes, n_nodes) = rb.vector(1)?;
    let (bufs, n_bufs) = rb.vector(2)?;
    if n_nodes != fields.len() {
        return err("node count does not match the schema");
    }
    let buffer = |i: usize| -> R<(usize, usize)> {
        if i >= n_bufs {
            return err("missing buffer");
        }
        let off = i64_at(msg.buf, bufs + 16 * i)?;
        let len = i64_at(msg.buf, bufs + 16 * i + 8)?;
        match (usize::try_from(off), usize::try_from(len)) {
            (Ok(o), Ok(l)) => Ok((o, l)),
            _ => err("bad buffer"),
        }
    };
    let mut b = 0usize;
    for (k, (_, kind)) in fields.iter().enumerate() {
        let node_len = i64_at(msg.buf, nodes + 16 * k)?;
        let nulls = i64_at(msg.buf, nodes + 16 * k + 8)?;
        if usize::try_from(node_len).ok() != Some(rows) {
            return err("column length differs from the batch length");
        }
        let (voff, vlen) = buffer(b)?;
        let valid = validity(body, voff, vlen, rows, nulls)?;
        let col = match out.get_mut(k) {
            Some(c) => c,
            None => return err("too many columns"),
        };
        match kind {
            Kind::Int64 | Kind::Float64 => {
                let (off, _) = buffer(b + 1)?;
                let data = slice(body, off, rows.saturating_mul(8))?;
                for (i, ok) in valid.iter().enumerate() {
                    let raw = i64_at(data, 8 * i)?;
                    col.push(match (*ok, kind) {
                        (false, _) => Cell::Null,
                        (true, Kind::Int64) => Cell::I(raw),
                        _ => Cell::F(f64::from_bits(raw as u64)),
                    });
                }
                b += 2;
            }
            Kind::Utf8 => {
                let (ooff, _) = buffer(b + 1)?;
                let (doff, dlen) = buffer(b + 2)?;
                let offsets = slice(body, ooff, rows.saturating_add(1).saturating_mul(4))?;
                let data = slice(body, doff, dlen)?;
                for (i, ok) in valid.iter().enumerate() {
                    if !*ok {
                        col.push(Cell::Null);
                        continue;
                    }
                    let s = i32_at(offsets, 4 * i)?;
                    let e = i32_at(offsets, 4 * i + 4)?;
                    if s < 0 || e < s {
                        return err("bad string offsets");
                    }
                    let bytes = slice(data, s as usize, (e - s) as usize)?;
                    col.push(Cell::S(
                        String::from_utf8(bytes.to_vec()).or_else(|_| err("text is not UTF-8"))?,
                    ));
                }
                b += 3;
            }
        }
    }
    Ok(())
}

enum Cell {
    Null,
    I(i64),
    F(f64),
    S(String),
}

/// Decodes an Arrow IPC stream into a [`Table`].
pub fn decode(bytes: &[u8]) -> Result<Table, String> {
    let mut at = 0usize;
    let mut fields: Option<Vec<(String, Kind)>> = None;
    let mut cells: Vec<Vec<Cell>> = Vec::new();
    while at < bytes.len() {
        let mut len = i32_at(bytes, at)?;
        at += 4;
        if len == -1 {
            len = i32_at(bytes, at)?;
            at += 4;
        }
        if len == 0 {
            break;
        }
        if len < 0 {
            return err("negative message length");
        }
        let meta = slice(bytes, at, len as usize)?;
        at += len as usize;
        let msg = Tbl::root(meta)?;
        let header_type = msg.u8(1, 0)?;
        let body_len = msg.i64(3, 0)?;
        let body_len = match usize::try_from(body_len) {
            Ok(n) => n,
            Err(_) => return err("bad body length"),
        };
        let body = slice(bytes, at, body_len)?;
        at += body_len;
        match header_type {
            1 => {
                let f = read_schema(msg)?;
                cells = (0..f.len()).map(|_| Vec::new()).collect();
                fields = Some(f);
            }
            3 => match &fields {
                Some(f) => read_batch(msg, body, f, &mut cells)?,
                None => return err("record batch before schema"),
            },
            _ => return err("unexpected message type"),
        }
    }
    let fields = match fields {
        Some(f) => f,
        None => return err("no schema"),
    };
    let mut columns = Vec::with_capacity(fields.len());
    for ((name, kind), cs) in fields.into_iter().zip(cells) {
        let values = match kind {
            Kind::Int64 => Values::Int64(
                cs.into_iter()
                    .map(|c| if let Cell::I(v) = c { Some(v) } else { None })
                    .collect(),
            ),
            Kind::Float64 => Values::Float64(
                cs.into_iter()
                    .map(|c| if let Cell::F(v) = c { Some(v) } else { None })
                    .collect(),
            ),
            Kind::Utf8 => Values::Utf8(
                cs.into_iter()
                    .map(|c| if let Cell::S(v) = c { Some(v) } else { None })
                    .collect(),
            ),
        };
        columns.push(Column { name, values });
    }
    Ok(Table { columns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0xff, 0xff, 0xff, 0xff, 0x10, 0, 0, 0, 1, 2]).is_err());
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            let _ = decode(&junk);
        }
    }
}
