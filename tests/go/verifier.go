// Command verifier checks worm-fs audit-log outputs with Go's x/mod sumdb packages.
//
//	verifier note VKEY NOTE                   signature of a checkpoint
//	verifier roots VKEY RAW NOTE...           roots recomputed from log show --raw
//	verifier prove VKEY PROOF.json            an inclusion proof from log prove
//	verifier consistency VKEY CONS.json       a consistency proof from log consistency
//	verifier cosig WITNESS_VKEY NOTE          a C2SP cosignature/v1 line on a checkpoint
//
// It prints "ok" and exits 0, or prints the reason and exits 1.
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type checkpoint struct {
	size int64
	root tlog.Hash
}

func openCheckpoint(vkey string, text []byte) (checkpoint, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return checkpoint{}, err
	}
	n, err := note.Open(text, note.VerifierList(v))
	if err != nil {
		return checkpoint{}, err
	}
	return parseBody(n.Text)
}

func parseBody(body string) (checkpoint, error) {
	lines := strings.Split(body, "\n")
	if len(lines) < 4 {
		return checkpoint{}, errors.New("checkpoint body too short")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return checkpoint{}, err
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		return checkpoint{}, errors.New("bad root hash")
	}
	var cp checkpoint
	cp.size = size
	copy(cp.root[:], raw)
	return cp, nil
}

type memHashes []tlog.Hash

func (m memHashes) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(m)) {
			return nil, fmt.Errorf("hash %d not stored", x)
		}
		out[i] = m[x]
	}
	return out, nil
}

func roots(vkey string, raw []byte, notes []string) error {
	lines := bytes.Split(raw, []byte("\n"))
	if len(lines) == 0 || len(lines[len(lines)-1]) != 0 {
		return errors.New("raw records do not end with a newline")
	}
	lines = lines[:len(lines)-1]
	var stored memHashes
	for i, rec := range lines {
		hs, err := tlog.StoredHashes(int64(i), rec, stored)
		if err != nil {
			return err
		}
		stored = append(stored, hs...)
	}
	for _, name := range notes {
		text, err := os.ReadFile(name)
		if err != nil {
			return err
		}
		cp, err := openCheckpoint(vkey, text)
		if err != nil {
			return err
		}
		if cp.size > int64(len(lines)) {
			return fmt.Errorf("checkpoint of size %d beyond %d records", cp.size, len(lines))
		}
		h, err := tlog.TreeHash(cp.size, stored)
		if err != nil {
			return err
		}
		if h != cp.root {
			return fmt.Errorf("root of size %d differs", cp.size)
		}
	}
	return nil
}

func hashes(hexes []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(hexes))
	for i, s := range hexes {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != tlog.HashSize {
			return nil, errors.New("bad proof hash")
		}
		copy(out[i][:], b)
	}
	return out, nil
}

func prove(vkey string, data []byte) error {
	var p struct {
		Seq        int64    `json:"seq"`
		Record     string   `json:"record"`
		Proof      []string `json:"proof"`
		Checkpoint string   `json:"checkpoint"`
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return err
	}
	cp, err := openCheckpoint(vkey, []byte(p.Checkpoint))
	if err != nil {
		return err
	}
	proof, err := hashes(p.Proof)
	if err != nil {
		return err
	}
	return tlog.CheckRecord(proof, cp.size, cp.root, p.Seq, tlog.RecordHash([]byte(p.Record)))
}

func consistency(vkey string, data []byte) error {
	var p struct {
		Proof []string `json:"proof"`
		Old   string   `json:"old_checkpoint"`
		New   string   `json:"new_checkpoint"`
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return err
	}
	old, err := openCheckpoint(vkey, []byte(p.Old))
	if err != nil {
		return err
	}
	cur, err := openCheckpoint(vkey, []byte(p.New))
	if err != nil {
		return err
	}
	proof, err := hashes(p.Proof)
	if err != nil {
		return err
	}
	return tlog.CheckTree(proof, cur.size, cur.root, old.size, old.root)
}

// cosig checks a C2SP tlog-cosignature cosignature/v1 line (key type 0x04).
func cosig(vkey string, text []byte) error {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return errors.New("bad witness key")
	}
	name := parts[0]
	key, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(key) != 1+ed25519.PublicKeySize || key[0] != 0x04 {
		return errors.New("not a cosignature/v1 key")
	}
	h := sha256.Sum256(append([]byte(name+"\n"), key...))
	if parts[1] != hex.EncodeToString(h[:4]) {
		return errors.New("witness key hash does not match its name and key")
	}
	s := string(text)
	i := strings.Index(s, "\n\n")
	if i < 0 {
		return errors.New("no signature block")
	}
	body := s[:i+1]
	for _, line := range strings.Split(strings.TrimSuffix(s[i+2:], "\n"), "\n") {
		prefix := "\u2014 " + name + " "
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(line[len(prefix):])
		if err != nil || len(sig) != 4+8+ed25519.SignatureSize || !bytes.Equal(sig[:4], h[:4]) {
			continue
		}
		ts := binary.BigEndian.Uint64(sig[4:12])
		msg := fmt.Sprintf("cosignature/v1\ntime %d\n%s", ts, body)
		if ed25519.Verify(ed25519.PublicKey(key[1:]), []byte(msg), sig[12:]) {
			return nil
		}
		return errors.New("cosignature does not verify")
	}
	return errors.New("no cosignature by this witness")
}

func run(args []string) error {
	if len(args) < 3 {
		return errors.New("usage: verifier MODE VKEY FILE...")
	}
	mode, vkey := args[0], args[1]
	data, err := os.ReadFile(args[2])
	if err != nil {
		return err
	}
	switch mode {
	case "note":
		_, err = openCheckpoint(vkey, data)
	case "roots":
		err = roots(vkey, data, args[3:])
	case "prove":
		err = prove(vkey, data)
	case "consistency":
		err = consistency(vkey, data)
	case "cosig":
		err = cosig(vkey, data)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	return err
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("ok")
}
