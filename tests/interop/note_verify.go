// Command note_verify checks an Invis ledger export with implementations
// that share no code with Invis: Go's golang.org/x/mod/sumdb/note verifies
// each checkpoint's C2SP signed note under the operator's verifier key,
// golang.org/x/mod/sumdb/tlog recomputes every checkpoint's RFC 6962 root
// from the entries and checks each consistency proof, and, given a
// witness verifier key, each cosignature/v1 line of that witness is
// verified from the C2SP tlog-cosignature specification with
// crypto/ed25519 (x/mod 0.7 has no cosignature support).
//
// Usage: note_verify <export.ndjson> <operator verifier key> [<witness verifier key>]
//
// Built offline from Debian's golang-golang-x-mod-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o note_verify note_verify.go
//
// It prints one summary line and exits 0, or prints the failure and exits 1.
package main

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type line struct {
	Body        *string `json:"body"`
	Note        *string `json:"note"`
	Consistency *struct {
		From  int64    `json:"from"`
		Proof []string `json:"proof"`
	} `json:"consistency"`
}

type witnessKey struct {
	name string
	hash [4]byte
	key  ed25519.PublicKey
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

// parseWitnessKey reads `<name>+<hex hash>+<base64(0x04 || key)>` and
// checks the hash, per C2SP signed-note and tlog-cosignature.
func parseWitnessKey(s string) witnessKey {
	parts := strings.SplitN(strings.TrimSpace(s), "+", 3)
	if len(parts) != 3 {
		fail("witness key %q is not name+hash+key", s)
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) != 33 || raw[0] != 0x04 {
		fail("witness key %q is not a cosignature/v1 Ed25519 key", s)
	}
	h := sha256.Sum256(append([]byte(parts[0]+"\n"), raw...))
	var w witnessKey
	copy(w.hash[:], h[:4])
	if hex.EncodeToString(w.hash[:]) != parts[1] {
		fail("witness key %q: key hash does not match", s)
	}
	w.name, w.key = parts[0], ed25519.PublicKey(raw[1:])
	return w
}

// cosigned reports whether n carries a valid cosignature/v1 by w.
func cosigned(n *note.Note, w witnessKey) (bool, error) {
	for _, sig := range n.UnverifiedSigs {
		if sig.Name != w.name || sig.Hash != binary.BigEndian.Uint32(w.hash[:]) {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(sig.Base64)
		if err != nil || len(raw) != 4+8+64 {
			return false, fmt.Errorf("malformed cosignature")
		}
		t := binary.BigEndian.Uint64(raw[4:12])
		msg := fmt.Sprintf("cosignature/v1\ntime %d\n%s", t, n.Text)
		if !ed25519.Verify(w.key, []byte(msg), raw[12:]) {
			return false, fmt.Errorf("cosignature of %s does not verify", w.name)
		}
		return true, nil
	}
	return false, nil
}

func main() {
	if len(os.Args) < 3 || len(os.Args) > 4 {
		fail("usage: note_verify <export.ndjson> <operator verifier key> [<witness verifier key>]")
	}
	verifier, err := note.NewVerifier(strings.TrimSpace(os.Args[2]))
	if err != nil {
		fail("operator verifier key: %v", err)
	}
	var witness *witnessKey
	if len(os.Args) == 4 {
		w := parseWitnessKey(os.Args[3])
		witness = &w
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	defer f.Close()

	// The tree, kept as tlog's stored hashes.
	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			if x < 0 || x >= int64(len(stored)) {
				return nil, fmt.Errorf("hash %d not stored", x)
			}
			out[i] = stored[x]
		}
		return out, nil
	})
	roots := map[int64]tlog.Hash{}
	var entries, notes, proofs, cosigs int64
	lastCosigned := int64(-1)
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 1<<20), 64<<20)
	for scanner.Scan() {
		text := bytes.TrimSpace(scanner.Bytes())
		if len(text) == 0 {
			continue
		}
		var l line
		if err := json.Unmarshal(text, &l); err != nil {
			fail("line is not JSON: %v", err)
		}
		switch {
		case l.Body != nil:
			hs, err := tlog.StoredHashes(entries, []byte(*l.Body), reader)
			if err != nil {
				fail("entry %d: %v", entries, err)
			}
			stored = append(stored, hs...)
			entries++
		case l.Note != nil:
			n, err := note.Open([]byte(*l.Note), note.VerifierList(verifier))
			if err != nil {
				fail("checkpoint note after entry %d: %v", entries, err)
			}
			body := strings.Split(n.Text, "\n")
			if len(body) < 4 || body[0] != verifier.Name() {
				fail("note body is not a checkpoint of origin %s: %q", verifier.Name(), n.Text)
			}
			size, err := strconv.ParseInt(body[1], 10, 64)
			if err != nil || size > entries {
				fail("note tree size %q is not at most the %d entries before it", body[1], entries)
			}
			root, err := base64.StdEncoding.DecodeString(body[2])
			if err != nil || len(root) != 32 {
				fail("note root %q is not a base64 SHA-256 hash", body[2])
			}
			th, err := tlog.TreeHash(size, reader)
			if err != nil {
				fail("tree hash of %d: %v", size, err)
			}
			if !bytes.Equal(th[:], root) {
				fail("the entries do not hash to the note's root at size %d", size)
			}
			roots[size] = th
			if l.Consistency != nil {
				from := l.Consistency.From
				old, ok := roots[from]
				if !ok {
					fail("consistency proof from size %d, which no earlier note stated", from)
				}
				var p tlog.TreeProof
				for _, h := range l.Consistency.Proof {
					ph, err := tlog.ParseHash(base64.StdEncoding.EncodeToString(mustHex(h)))
					if err != nil {
						fail("proof hash: %v", err)
					}
					p = append(p, ph)
				}
				if err := tlog.CheckTree(p, size, th, from, old); err != nil {
					fail("consistency proof %d -> %d: %v", from, size, err)
				}
				proofs++
			}
			notes++
			if witness != nil {
				ok, err := cosigned(n, *witness)
				if err != nil {
					fail("checkpoint at size %d: %v", size, err)
				}
				if ok {
					cosigs++
					lastCosigned = size
				}
			}
		}
	}
	if err := scanner.Err(); err != nil {
		fail("%v", err)
	}
	if notes == 0 {
		fail("no checkpoint note in the export")
	}
	if witness != nil && cosigs == 0 {
		fail("no cosignature of witness %s", witness.name)
	}
	fmt.Printf("x/mod/sumdb/note: %d operator note signature(s) OK (%s); x/mod/sumdb/tlog: %d entries, every root OK, %d consistency proof(s) OK",
		notes, verifier.Name(), entries, proofs)
	if witness != nil {
		fmt.Printf("; cosignature/v1 (crypto/ed25519): %d by %s OK, latest at size %d", cosigs, witness.name, lastCosigned)
	}
	fmt.Println()
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		fail("proof hash %q is not hex SHA-256", s)
	}
	return b
}
