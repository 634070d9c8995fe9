exec > _scheduler-stdout.txt
exec 2> _scheduler-stderr.txt


'<nextham>' 'predict' 'model' 'structures/si.xyz' '-o' '.' '--protocol' 'fast' '--batch-size' '4' '--bands' '--kpath' 'GAMMA-X-U|K-GAMMA-L-W-X' '--npoints' '40' '--dos' '--gap' '--mesh' '4x4x4' '--device' 'cpu'  > 'nextham.out' 2> 'nextham.err'
