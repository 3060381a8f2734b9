// Our stand-in for monis.app/mlog, which the Go module proxy refuses (403). The driver
// modules reach it with `replace monis.app/mlog => ../mlog-standin`.
module monis.app/mlog

go 1.24
