
ŸœD
*keptJ 
gen_ai.request.model
gpt-4oT
*rejectedJ 
gen_ai.request.model
gpt-4oJ
k€€€€