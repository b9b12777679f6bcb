//! The `DT_NEEDED` entries of an ELF file (the shared libraries a program links), for `--mpi auto`.
//! No I/O: [`needed`] works on a prefix of the file and asks for a longer one when the dynamic
//! section or its string table lies beyond it.

/// Why the libraries could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    /// The prefix is too short: read the first `.0` bytes of the file and call again.
    #[error("need the first {0} bytes")]
    NeedMore(u64),
    #[error("malformed ELF file: {0}")]
    Malformed(&'static str),
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
/// No real program links more; a bound keeps a corrupt file from costing much.
const MAX_DYN_ENTRIES: u64 = 1 << 16;
const MAX_PHDRS: u64 = 1 << 12;

#[derive(Clone, Copy)]
struct Reader<'a> {
    data: &'a [u8],
    /// Size of the whole file: a range past it is malformed, a range past `data` needs more.
    file_len: u64,
    wide: bool,
    big: bool,
}

impl Reader<'_> {
    fn range(&self, off: u64, len: u64) -> Result<&[u8], ElfError> {
        let end = off.checked_add(len).ok_or(ElfError::Malformed("offset overflows"))?;
        if end > self.file_len {
            return Err(ElfError::Malformed("a table lies past the end of the file"));
        }
        if end > self.data.len() as u64 {
            return Err(ElfError::NeedMore(end));
        }
        Ok(&self.data[off as usize..end as usize])
    }

    fn uint(&self, off: u64, len: u64) -> Result<u64, ElfError> {
        let b = self.range(off, len)?;
        let mut v = 0u64;
        for i in 0..b.len() {
            let byte = if self.big { b[i] } else { b[b.len() - 1 - i] };
            v = (v << 8) | byte as u64;
        }
        Ok(v)
    }

    /// A word that is 4 bytes in ELF32 and 8 in ELF64.
    fn word(&self, off: u64) -> Result<u64, ElfError> {
        self.uint(off, if self.wide { 8 } else { 4 })
    }
}

/// The `DT_NEEDED` names of the ELF file whose first bytes are `data` (of `file_len` in all).
/// A statically linked program yields an empty list.
pub fn needed(data: &[u8], file_len: u64) -> Result<Vec<String>, ElfError> {
    if data.len() < 6 && (data.len() as u64) < file_len {
        return Err(ElfError::NeedMore(64.min(file_len)));
    }
    if data.len() < 6 || &data[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    let wide = match data[4] {
        1 => false,
        2 => true,
        _ => return Err(ElfError::Malformed("unknown ELF class")),
    };
    let big = match data[5] {
        1 => false,
        2 => true,
        _ => return Err(ElfError::Malformed("unknown byte order")),
    };
    let r = Reader { data, file_len, wide, big };
    r.range(0, if wide { 64 } else { 52 })?;
    let (phoff, phentsize, phnum) =
        if wide { (r.uint(0x20, 8)?, r.uint(0x36, 2)?, r.uint(0x38, 2)?) } else { (r.uint(0x1c, 4)?, r.uint(0x2a, 2)?, r.uint(0x2c, 2)?) };
    let min_ent = if wide { 56 } else { 32 };
    if phnum == 0 {
        return Ok(Vec::new());
    }
    if phentsize < min_ent || phnum > MAX_PHDRS {
        return Err(ElfError::Malformed("bad program header table"));
    }
    // (vaddr, offset, filesz) of each loaded segment, to turn DT_STRTAB's address into an offset.
    // The whole table at once: one request for more, not one per field.
    r.range(phoff, phnum * phentsize)?;
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum {
        let at = phoff.checked_add(i * phentsize).ok_or(ElfError::Malformed("offset overflows"))?;
        let ptype = r.uint(at, 4)?;
        let (offset, vaddr, filesz) = if wide {
            (r.uint(at + 8, 8)?, r.uint(at + 16, 8)?, r.uint(at + 32, 8)?)
        } else {
            (r.uint(at + 4, 4)?, r.uint(at + 8, 4)?, r.uint(at + 16, 4)?)
        };
        match ptype as u32 {
            PT_LOAD => loads.push((vaddr, offset, filesz)),
            PT_DYNAMIC => dynamic = Some((offset, filesz)),
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else { return Ok(Vec::new()) };
    let ent = if wide { 16 } else { 8 };
    let count = (dyn_size / ent).min(MAX_DYN_ENTRIES);
    r.range(dyn_off, count * ent)?;
    let mut needed_offsets = Vec::new();
    let (mut strtab, mut strsz) = (None, None);
    for i in 0..count {
        let at = dyn_off + i * ent;
        let tag = r.word(at)?;
        let val = r.word(at + ent / 2)?;
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed_offsets.push(val),
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            _ => {}
        }
    }
    if needed_offsets.is_empty() {
        return Ok(Vec::new());
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err(ElfError::Malformed("dynamic section without a string table"));
    };
    let str_off = loads
        .iter()
        .find(|&&(vaddr, _, filesz)| strtab >= vaddr && strtab - vaddr < filesz)
        .map(|&(vaddr, offset, _)| strtab - vaddr + offset)
        // Some linkers (and objects never relocated) store the offset itself.
        .unwrap_or(strtab);
    let table = r.range(str_off, strsz)?;
    let mut out = Vec::with_capacity(needed_offsets.len());
    for off in needed_offsets {
        let rest = table.get(off as usize..).ok_or(ElfError::Malformed("library name outside the string table"))?;
        let end = rest.iter().position(|&b| b == 0).ok_or(ElfError::Malformed("unterminated library name"))?;
        out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal ELF64/ELF32 image: header, one PT_LOAD covering the file (vaddr = 0x400000 +
    /// offset), one PT_DYNAMIC, a dynamic section and a string table.
    fn image(wide: bool, big: bool, libs: &[&str]) -> Vec<u8> {
        let put = |v: &mut Vec<u8>, at: usize, x: u64, n: usize| {
            for i in 0..n {
                let shift = if big { 8 * (n - 1 - i) } else { 8 * i };
                v[at + i] = (x >> shift) as u8;
            }
        };
        let (ehsize, phent, dynent) = if wide { (64, 56, 16) } else { (52, 32, 8) };
        let phoff = ehsize;
        let dyn_off = phoff + 2 * phent;
        let ndyn = libs.len() + 3;
        let str_off = dyn_off + ndyn * dynent;
        let mut strtab = vec![0u8];
        let mut name_offs = Vec::new();
        for l in libs {
            name_offs.push(strtab.len() as u64);
            strtab.extend_from_slice(l.as_bytes());
            strtab.push(0);
        }
        let total = str_off + strtab.len();
        let mut v = vec![0u8; total];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = if wide { 2 } else { 1 };
        v[5] = if big { 2 } else { 1 };
        let base = 0x400000u64;
        if wide {
            put(&mut v, 0x20, phoff as u64, 8);
            put(&mut v, 0x36, phent as u64, 2);
            put(&mut v, 0x38, 2, 2);
        } else {
            put(&mut v, 0x1c, phoff as u64, 4);
            put(&mut v, 0x2a, phent as u64, 2);
            put(&mut v, 0x2c, 2, 2);
        }
        // PT_LOAD and PT_DYNAMIC.
        for (i, (ty, off, vaddr, size)) in
            [(PT_LOAD, 0u64, base, total as u64), (PT_DYNAMIC, dyn_off as u64, base + dyn_off as u64, (ndyn * dynent) as u64)]
                .into_iter()
                .enumerate()
        {
            let at = phoff + i * phent;
            put(&mut v, at, ty as u64, 4);
            if wide {
                put(&mut v, at + 8, off, 8);
                put(&mut v, at + 16, vaddr, 8);
                put(&mut v, at + 32, size, 8);
            } else {
                put(&mut v, at + 4, off, 4);
                put(&mut v, at + 8, vaddr, 4);
                put(&mut v, at + 16, size, 4);
            }
        }
        let w = dynent / 2;
        let mut entries: Vec<(u64, u64)> = name_offs.iter().map(|&o| (DT_NEEDED, o)).collect();
        entries.push((DT_STRTAB, base + str_off as u64));
        entries.push((DT_STRSZ, strtab.len() as u64));
        entries.push((DT_NULL, 0));
        for (i, (tag, val)) in entries.into_iter().enumerate() {
            put(&mut v, dyn_off + i * dynent, tag, w);
            put(&mut v, dyn_off + i * dynent + w, val, w);
        }
        v[str_off..].copy_from_slice(&strtab);
        v
    }

    #[test]
    fn reads_needed_in_every_class_and_byte_order() {
        for wide in [false, true] {
            for big in [false, true] {
                let img = image(wide, big, &["libmpi.so.40", "libc.so.6"]);
                assert_eq!(needed(&img, img.len() as u64).unwrap(), ["libmpi.so.40", "libc.so.6"], "wide {wide} big {big}");
            }
        }
    }

    #[test]
    fn asks_for_more_when_the_tables_lie_beyond_the_prefix() {
        let img = image(true, false, &["libmpich.so.12"]);
        let len = img.len() as u64;
        let mut have = 8usize;
        let mut rounds = 0;
        let libs = loop {
            match needed(&img[..have], len) {
                Ok(l) => break l,
                Err(ElfError::NeedMore(n)) => {
                    assert!(n as usize > have && n <= len, "{n} vs {have}");
                    have = n as usize;
                }
                Err(e) => panic!("{e}"),
            }
            rounds += 1;
            // Header, program headers, dynamic section, string table: whole tables per request.
            assert!(rounds <= 4, "{rounds} requests");
        };
        assert_eq!(libs, ["libmpich.so.12"]);
    }

    #[test]
    fn non_elf_and_static_and_broken_files() {
        assert_eq!(needed(b"#!/bin/sh\necho hi\n", 18), Err(ElfError::NotElf));
        assert_eq!(needed(b"", 0), Err(ElfError::NotElf));
        let img = image(true, false, &[]);
        assert_eq!(needed(&img, img.len() as u64).unwrap(), Vec::<String>::new());
        // A table that points past the end of the file is malformed, not a request for more.
        let img = image(true, false, &["libx.so"]);
        let cut = &img[..img.len() - 3];
        assert!(matches!(needed(cut, cut.len() as u64), Err(ElfError::Malformed(_))));
    }

    #[test]
    fn real_binaries_on_this_machine() {
        let Ok(data) = std::fs::read("/bin/sh") else { return };
        let libs = needed(&data, data.len() as u64).unwrap();
        assert!(libs.iter().any(|l| l.starts_with("libc.so")), "{libs:?}");
    }

    proptest! {
        /// Arbitrary bytes (and arbitrary damage to a valid image) never panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
            let _ = needed(&bytes, bytes.len() as u64);
            let mut img = image(true, false, &["libmpi.so.40"]);
            for (at, b) in flips {
                let n = img.len();
                img[at % n] = b;
            }
            let _ = needed(&img, img.len() as u64);
            let _ = needed(&img[..img.len() / 2], img.len() as u64);
        }
    }
}
